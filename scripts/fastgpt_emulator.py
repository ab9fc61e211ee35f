"""A FastGPT OpenAPI emulator: a real aiohttp server that answers like a FastGPT app.

callagent's tests, benchmarks and demos point their FastGPT base URL at this server. It speaks
the chat OpenAPI as FastGPT builds do, ugly parts included: named SSE events with single-line
JSON, empty-content heartbeats, ``workflowDuration`` before the stop chunk and ``[DONE]``,
``flowResponses`` after ``[DONE]`` (v1) or ``flowNodeResponse`` per node (v2), ``event: error``
frames behind HTTP 200, envelopes with HTTP 200 and a failing ``code``, array contents, and the
chat record/history CRUD endpoints under both the legacy and the newer path families.

Who writes the replies is a ``Brain``: ``ScriptedBrain`` (fixed replies or a function) or
``LocalBrain`` (callagent's embedded agent). Brain text is cut into ``chunk_chars`` pieces, so
``<state>`` tags arrive split across chunks the way a model's tokens split them.

A *fault mode* turns the next completions calls into a misbehaving upstream (``FAULT_MODES``
below, set per app or at run time with ``Emulator.set_fault`` / ``POST /__emulator/fault``).

Everything a test wants to assert sits on the app under ``EMULATOR``: the requests received,
the stored chats, and one ``StreamLog`` per completions call with its timings, including when
the client went away (the handler is cancelled on disconnect, so the server must run with
``handler_cancellation=True``, as aiohttp's test server does). Other processes (benchmarks,
multi-process tests) use ``GET /__emulator/requests|chats|streams``, ``POST /__emulator/fault``
``{"mode": ..., "count": n}``, ``POST /__emulator/reset`` and ``DELETE /__emulator/requests``.

Usage: ``python scripts/fastgpt_emulator.py --port 3000 [--reply TEXT ...] [--fault MODE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

DEFAULT_REPLY: Final = "<state>1002</state>您好，请问有人受伤吗？"

FAULT_MODES: Final = frozenset(
    {
        "http500",  # HTTP 500 with an error envelope
        "error_before",  # HTTP 200 and one `event: error` frame before any output
        "error_mid",  # a few chunks, `event: error`, close without [DONE]
        "eof",  # a few chunks, then the body ends without [DONE] and without error
        "no_first_token",  # headers, then silence until the client leaves
        "stall",  # a few chunks, then silence until the client leaves
        "heartbeats_only",  # only empty-content answer chunks until the client leaves
        "malformed",  # garbage frames and lines interleaved, the stream still completes
        "unknown_events",  # unknown events and fields interleaved, the stream still completes
        "big",  # about 1 MB of reply text
        "array_content",  # non-stream content as an array of value items
        "reasoning",  # `delta.reasoning_content` chunks interleaved (never to be spoken)
        "fast_answer",  # the reply as `fastAnswer` events
        "slow_headers",  # Emulator.slow_headers_delay (10 s) before the response starts
        "abort",  # the TCP connection is aborted mid-stream
        "interactive",  # a userSelect `interactive` node ends the run; the next turn resumes it
    }
)
_CUT_SHORT: Final = frozenset({"error_mid", "eof", "stall", "abort"})
_ERROR_FAULTS: Final = frozenset({"http500", "error_before", "error_mid"})
_SILENT_FAULTS: Final = frozenset({"no_first_token", "stall", "heartbeats_only"})

# About 1 MB of UTF-8 (36 bytes a sentence).
_BIG_TEXT: Final = "这是一段很长的测试文本。" * 29_000
_REASONING_TEXT: Final = "用户报告了交通事故，先确认是否有人受伤。"
_INTERACTIVE: Final = {
    "type": "userSelect",
    "entryNodeIds": ["userSelect"],
    "memoryEdges": [],
    "nodeOutputs": [],
    "params": {
        "description": "请问是单车事故还是多车事故？",
        "userSelectOptions": [
            {"key": "option1", "value": "单车事故"},
            {"key": "option2", "value": "多车事故"},
        ],
    },
}
_FLUSH_BYTES: Final = 64 * 1024
_LEAVE_POLL: Final = 1.0  # fallback check for a gone client when the handler is not cancelled

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream;charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


# -- brains -----------------------------------------------------------------------------------


class Brain(Protocol):
    """Writes the replies: text pieces (``<state>`` tags verbatim) and variable updates (dicts)."""

    def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str | dict[str, Any]]: ...


# f(chat_id, text, variables) -> a string, or a list of strings and variable-update dicts
# (or an awaitable of either).
ReplyFunction = Callable[[str, str, dict[str, Any]], Any]


class ScriptedBrain:
    """Fixed replies: with a list, the N-th turn of a chat gets ``replies[N % len]``;
    with a function ``f(chat_id, text, variables)``, whatever it returns (a string, or a list
    of strings and variable-update dicts; it may be a coroutine function)."""

    def __init__(self, replies: Sequence[str] | ReplyFunction = (DEFAULT_REPLY,)) -> None:
        if not callable(replies) and not replies:
            raise ValueError("ScriptedBrain needs at least one reply")
        self._replies = replies
        self._turns: dict[str, int] = {}

    async def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str | dict[str, Any]]:
        if callable(self._replies):
            out = self._replies(chat_id, text, variables)
            if inspect.isawaitable(out):
                out = await out
        else:
            turn = self._turns.get(chat_id, 0)
            self._turns[chat_id] = turn + 1
            out = self._replies[turn % len(self._replies)]
        for item in [out] if isinstance(out, str | dict) else out:
            yield item


class LocalBrain:
    """callagent's embedded agent (``callagent.upstream.local.LocalAgent``) behind FastGPT's API."""

    def __init__(self, agent: Any = None) -> None:
        self._agent = agent
        self._turns = itertools.count(1)

    async def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str | dict[str, Any]]:
        _make_callagent_importable()
        from callagent.upstream.base import UpstreamTurn

        if self._agent is None:
            from callagent.upstream.local import LocalAgent

            self._agent = LocalAgent()
        turn = UpstreamTurn(chat_id, f"emulator-{next(self._turns)}", text, dict(variables))
        async with aclosing(self._agent.stream(turn)) as chunks:
            async for chunk in chunks:
                # Keepalives and end markers have no FastGPT counterpart: silence does the job.
                if isinstance(chunk, dict):
                    yield dict(chunk)
                elif isinstance(chunk, str):
                    yield chunk


def _make_callagent_importable() -> None:
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


# -- state ------------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    headers: dict[str, str]
    peer: str = ""  # "host:port" of the client's TCP connection (a reused connection keeps it)


@dataclass(slots=True)
class Chat:
    app_id: str
    chat_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    custom_title: str = ""
    top: bool = False
    update_time: str = ""
    node_responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by AI dataId
    awaiting_interactive: bool = False


@dataclass(slots=True)
class StreamLog:
    """One completions call. Times are ``loop.time()`` values."""

    chat_id: str
    stream: bool
    detail: bool
    fault: str | None
    started: float
    first_chunk_at: float | None = None  # first non-empty answer/fastAnswer chunk written
    finished_at: float | None = None  # the response ended normally
    disconnected_at: float | None = None  # the client went away before the end
    outcome: str = "running"  # completed | disconnected | error | eof | aborted | refused
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the handler ended

    def summary(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "closed"}
        return out | {"closed": self.closed.is_set()}


class Emulator:
    """Settings (mutable at run time) and everything the emulator has seen and stored."""

    def __init__(
        self,
        brain: Brain,
        *,
        api_key: str,
        app_id: str,
        chunk_chars: int,
        chunk_delay: float,
        first_chunk_delay: float,
        heartbeat_interval: float,
        version: str,
        fault: str | None,
    ) -> None:
        if chunk_chars < 1:
            raise ValueError("chunk_chars must be >= 1")
        if version not in ("v1", "v2"):
            raise ValueError("version must be 'v1' or 'v2'")
        _check_fault(fault)
        self.brain = brain
        self.api_key = api_key
        self.app_id = app_id
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay
        self.first_chunk_delay = first_chunk_delay
        self.heartbeat_interval = heartbeat_interval
        self.version = version
        self.fault = fault
        self.slow_headers_delay = 10.0
        self.fault_after_chunks = 3  # answer chunks sent before a cut-short fault strikes
        self.save_delay = 0.0  # seconds between workflowDuration and the stop chunk (saving the chat)
        self.requests: list[RecordedRequest] = []
        self.chats: dict[tuple[str, str], Chat] = {}
        self.streams: list[StreamLog] = []
        self._fault_once: str | None = None
        self._fault_once_left = 0
        self._runs: dict[tuple[str, str], set[_Turn]] = {}

    def set_fault(self, mode: str | None, count: int | None = None) -> None:
        """Use ``mode`` for the next ``count`` completions calls (``None``: for all of them)."""
        _check_fault(mode)
        if count is None:
            self.fault, self._fault_once_left = mode, 0
        else:
            self._fault_once, self._fault_once_left = mode, count

    def take_fault(self) -> str | None:
        if self._fault_once_left > 0:
            self._fault_once_left -= 1
            return self._fault_once
        return self.fault

    def chat(self, chat_id: str, app_id: str | None = None) -> Chat | None:
        return self.chats.get((app_id or self.app_id, chat_id))

    def reset(self) -> None:
        """Forget requests, chats and stream logs (settings stay)."""
        self.requests.clear()
        self.chats.clear()
        self.streams.clear()

    def _stored_chat(self, chat_id: str) -> Chat:
        key = (self.app_id, chat_id)
        chat = self.chats.get(key)
        if chat is None:
            chat = self.chats[key] = Chat(self.app_id, chat_id, update_time=_now_iso())
        return chat


def _check_fault(mode: str | None) -> None:
    if mode is not None and mode not in FAULT_MODES:
        raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(sorted(FAULT_MODES))}")


EMULATOR: Final = web.AppKey("emulator", Emulator)
REQUEST_BODY: Final = web.RequestKey("request_body", object)  # the request's parsed JSON or None


def create_emulator_app(
    brain: Brain | None = None,
    *,
    api_key: str = "fastgpt-test",
    app_id: str = "app1",
    chunk_chars: int = 4,
    chunk_delay: float = 0.0,
    first_chunk_delay: float = 0.0,
    heartbeat_interval: float = 10.0,
    version: str = "v1",
    fault: str | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_record_request], client_max_size=16 * 1024 * 1024)
    app[EMULATOR] = Emulator(
        brain or ScriptedBrain([DEFAULT_REPLY]),
        api_key=api_key,
        app_id=app_id,
        chunk_chars=chunk_chars,
        chunk_delay=chunk_delay,
        first_chunk_delay=first_chunk_delay,
        heartbeat_interval=heartbeat_interval,
        version=version,
        fault=fault,
    )
    _add_routes(app.router)
    return app


def _add_routes(router: web.UrlDispatcher) -> None:
    chat = "/api/core/chat"
    router.add_post("/api/v1/chat/completions", completions)
    router.add_post("/api/v2/chat/completions", completions)
    router.add_post("/api/v2/chat/stop", stop_chat)
    for path in (f"{chat}/getHistories", f"{chat}/history/getHistories"):
        router.add_post(path, get_histories)
    router.add_post(f"{chat}/updateHistory", update_history)
    router.add_put(f"{chat}/history/updateHistory", update_history)
    for path in (f"{chat}/delHistory", f"{chat}/history/delHistory"):
        router.add_delete(path, del_history)
    for path in (f"{chat}/clearHistories", f"{chat}/history/clearHistories"):
        router.add_delete(path, clear_histories)
    router.add_get(f"{chat}/init", init_chat)
    for path in (f"{chat}/getPaginationRecords", f"{chat}/record/getPaginationRecords"):
        router.add_post(path, get_pagination_records)
    for path in (f"{chat}/getResData", f"{chat}/record/getResData"):
        router.add_get(path, get_res_data)
    router.add_delete(f"{chat}/item/delete", delete_records)
    router.add_delete(f"{chat}/record/delete", delete_records)
    router.add_post(f"{chat}/record/delete", delete_records)
    router.add_get("/__emulator/requests", control_requests)
    router.add_delete("/__emulator/requests", control_clear_requests)
    router.add_get("/__emulator/chats", control_chats)
    router.add_get("/__emulator/streams", control_streams)
    router.add_post("/__emulator/fault", control_fault)
    router.add_post("/__emulator/reset", control_reset)


@web.middleware
async def _record_request(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    raw = await request.read() if request.body_exists else b""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    request[REQUEST_BODY] = body
    if not request.path.startswith("/__emulator/"):
        request.app[EMULATOR].requests.append(
            RecordedRequest(
                request.method,
                request.path,
                {str(k): v for k, v in request.query.items()},
                body,
                {str(k): v for k, v in request.headers.items()},  # header names are `istr`
                _peer(request),
            )
        )
    return await handler(request)


# -- envelopes and small helpers ---------------------------------------------------------------


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


def _json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _envelope(data: Any = None) -> web.Response:
    return _json_response({"code": 200, "statusText": "", "message": "", "data": data})


def _error_body(code: int, status_text: str, message: str) -> dict[str, Any]:
    return {"code": code, "statusText": status_text, "message": message, "data": None}


def _known_error(emu: Emulator, code: int, status_text: str, message: str) -> web.Response:
    # Older builds answer known errors with HTTP 200; newer ones always with HTTP 500.
    return _json_response(_error_body(code, status_text, message), 200 if emu.version == "v1" else 500)


def _generic_error(message: str) -> web.Response:
    return _json_response(_error_body(500, "", message), 500)


def _authorized(request: web.Request, emu: Emulator) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return scheme == "Bearer" and key.strip() == emu.api_key


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ids = itertools.count(int(datetime.now(UTC).timestamp()) << 64)


def _new_id() -> str:
    """A 24-hex-digit id shaped like a MongoDB ObjectId (seconds first, then a counter)."""
    return f"{next(_ids):024x}"


def _text_value(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"content": text}}


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _until_client_leaves(request: web.Request) -> None:
    """Hang. The handler is normally cancelled when the client goes; polling is the fallback."""
    transport = request.transport
    # No event tells of a closed transport: poll (rarely, the cancellation comes first).
    while transport is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_LEAVE_POLL)
    raise ConnectionResetError("client went away")


# -- SSE framing ------------------------------------------------------------------------------

_CHUNK_HEAD: Final = b'{"id":"","object":"","created":0,"model":"","choices":[{"delta":{"role":"assistant","content":'
_CHUNK_TAIL: Final = b'},"index":0,"finish_reason":null}]}'
_UNNAMED_WITHOUT_DETAIL: Final = frozenset({"answer", "fastAnswer"})


def _chunk_json(text: str) -> bytes:
    return _CHUNK_HEAD + orjson.dumps(text) + _CHUNK_TAIL


def _stop_json(version: str) -> bytes:
    delta = {} if version == "v1" else {"role": "assistant", "content": None}
    return orjson.dumps(
        {
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "choices": [{"delta": delta, "index": 0, "finish_reason": "stop"}],
        }
    )


def _reasoning_json(text: str) -> bytes:
    delta = {"role": "assistant", "reasoning_content": text}
    return orjson.dumps(
        {
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "choices": [{"delta": delta, "index": 0, "finish_reason": None}],
        }
    )


def _chunk_json_with_unknown_fields(text: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "responseValueId": f"rv-{n}",
            "stepId": "step-1",
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "choices": [
                {
                    "delta": {"role": "assistant", "content": text, "annotations": []},
                    "index": 0,
                    "finish_reason": None,
                    "logprobs": None,
                }
            ],
        }
    )


def _frame(event: str | None, payload: bytes) -> bytes:
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def _error_frame(body: dict[str, Any]) -> bytes:
    return _frame("error", orjson.dumps(body))


_MALFORMED_FRAMES: Final = (
    # Cut off inside a string: a parser that salvages it would speak 乱码.
    b'event: answer\ndata: {"id":"","object":"","choices":[{"delta":{"role":"assistant","content":"'
    + "乱码".encode()
    + b"\n\n",
    b"this line is not part of any frame\n\n",
    b": a comment line\n\n",
    b"event: answer\ndata: not json at all\n\n",
    b"data:\n\n",
    b'event: flowNodeStatus\ndata: {"status":"running","name":\n\n',
    b'event: answer\r\ndata: {"choices": [\r\n\r\n',
    b"\n\n",
)

_UNKNOWN_PAYLOADS: Final = (
    (
        "toolCall",
        {
            "tool": {
                "id": "call-1",
                "toolName": "查询路况",
                "toolAvatar": "",
                "functionName": "road",
                "params": "",
                "response": "",
            }
        },
    ),
    (
        "toolParams",
        {"tool": {"id": "call-1", "toolName": "", "toolAvatar": "", "params": '{"road":"G2"}', "response": ""}},
    ),
    ("toolResponse", {"tool": {"id": "call-1", "toolName": "", "toolAvatar": "", "params": "", "response": "畅通"}}),
    ("stepTitle", {"stepId": "step-1", "title": "分析事故"}),
    ("agentPlan", {"plan": {"steps": [{"id": "step-1", "title": "分析事故"}]}}),
    ("chatTitle", {"title": "交通事故"}),
)


class _SseWriter:
    """Buffers frames and writes them at await points; sends heartbeats on silence."""

    def __init__(self, response: web.StreamResponse, log: StreamLog, *, detail: bool, heartbeat: float) -> None:
        self._response = response
        self._log = log
        self._detail = detail
        self._heartbeat = heartbeat
        self._loop = asyncio.get_running_loop()
        self._buffer: list[bytes] = []
        self._size = 0
        self._first_pending = False
        self.last_write = self._loop.time()

    def event(self, name: str, payload: bytes) -> None:
        """A named frame. Without detail FastGPT sends only answer-like frames, unnamed, and errors."""
        if self._detail or name == "error":
            self.raw(_frame(name, payload))
        elif name in _UNNAMED_WITHOUT_DETAIL:
            self.raw(_frame(None, payload))

    def speech(self, name: str, payload: bytes) -> None:
        """An answer/fastAnswer chunk carrying text: the first one sets ``first_chunk_at``."""
        self.event(name, payload)
        if self._log.first_chunk_at is None:
            self._first_pending = True

    def raw(self, frame: bytes) -> None:
        self._buffer.append(frame)
        self._size += len(frame)

    async def flush(self, *, at_least: int = 1) -> None:
        if self._size < at_least or not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        await self._response.write(data)
        self.last_write = self._loop.time()
        if self._first_pending:
            self._first_pending = False
            self._log.first_chunk_at = self.last_write

    def until_heartbeat(self) -> float | None:
        if self._heartbeat <= 0:
            return None
        return max(0.0, self._heartbeat - (self._loop.time() - self.last_write))

    async def heartbeat_if_due(self) -> None:
        left = self.until_heartbeat()
        if left is not None and left <= 0:
            self.event("answer", _chunk_json(""))
            await self.flush()

    async def pause(self, seconds: float) -> None:
        """Stay silent for ``seconds`` (heartbeats aside)."""
        if seconds <= 0:
            return
        await self.flush()
        deadline = self._loop.time() + seconds
        while (left := deadline - self._loop.time()) > 0:
            until = self.until_heartbeat()
            await asyncio.sleep(left if until is None else min(left, until))
            await self.heartbeat_if_due()


class _BrainFailed(Exception):
    """The brain raised: FastGPT reports a workflow crash as an `error` frame."""


_END: Final = object()


async def _step(source: AsyncIterator[Any]) -> Any:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _END


class _BrainFeed:
    """The brain's reply one item at a time, heartbeating (through a writer) while it is silent."""

    def __init__(self, source: AsyncIterator[str | dict[str, Any]]) -> None:
        self._source = source
        self._pending: asyncio.Task[Any] | None = None

    async def next(self, writer: _SseWriter | None) -> str | dict[str, Any] | None:
        """The next item, or None at the end of the reply (or when interrupted)."""
        if writer is not None:
            await writer.flush()
        step = self._pending = asyncio.create_task(_step(self._source))
        try:
            while not step.done():
                await asyncio.wait((step,), timeout=writer.until_heartbeat() if writer else None)
                if writer is not None and not step.done():
                    await writer.heartbeat_if_due()
        finally:
            self._pending = None
            if not step.done():
                step.cancel()
                await asyncio.wait((step,))
        if step.cancelled():
            return None
        error = step.exception()
        if error is not None:
            raise _BrainFailed(str(error) or type(error).__name__) from error
        item = step.result()
        return None if item is _END else item

    def interrupt(self) -> None:
        if self._pending is not None:
            self._pending.cancel()

    async def close(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            # A generator interrupted mid-step may refuse to close again: it is closed already.
            with suppress(RuntimeError):
                await aclose()


async def _with_big_text(source: AsyncIterator[str | dict[str, Any]]) -> AsyncIterator[str | dict[str, Any]]:
    async with aclosing(source) as items:  # type: ignore[type-var]
        async for item in items:
            yield item
    yield _BIG_TEXT


# -- completions ------------------------------------------------------------------------------


async def completions(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR]
    body = request[REQUEST_BODY]
    turn = _Turn(request, emu, body if isinstance(body, dict) else {})
    try:
        return await turn.respond()
    except ConnectionResetError:
        turn.client_left()
        return turn.response or web.Response()
    except asyncio.CancelledError:
        turn.client_left()
        raise
    finally:
        turn.end()


class _Turn:
    """One completions call: the run of the workflow and its response."""

    def __init__(self, request: web.Request, emu: Emulator, body: dict[str, Any]) -> None:
        self.request = request
        self.emu = emu
        self.body = body
        self.is_stream = bool(body.get("stream"))
        self.detail = bool(body.get("detail"))
        self.chat_id = str(body.get("chatId") or "")
        self.version = emu.version
        self.fault = emu.take_fault()
        self.loop = asyncio.get_running_loop()
        self.log = StreamLog(self.chat_id, self.is_stream, self.detail, self.fault, self.loop.time())
        emu.streams.append(self.log)
        self.response: web.StreamResponse | None = None
        self.feed: _BrainFeed | None = None
        self.running = False  # the workflow has started: a client leaving now still saves the turn
        self.persisted = False
        self.stopped = False
        self.reply_parts: list[str] = []
        self.text = ""
        self.variables: dict[str, Any] = {}
        self.human_id = self.ai_id = ""

    # -- life cycle

    async def respond(self) -> web.StreamResponse:
        emu, fault = self.emu, self.fault
        if not _authorized(self.request, emu):
            return self._refuse(_error_body(514, "unAuthApiKey", "Api Key 不合法"), known=True)
        messages = self.body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._refuse({"message": "messages is empty"}, known=False)
        if fault == "http500":
            self.log.outcome = "error"
            return _generic_error("emulated internal error")
        if fault == "error_before":
            return await self._error_before()
        if fault == "slow_headers":
            await asyncio.sleep(emu.slow_headers_delay)
        self._begin(messages[-1])
        if self.is_stream:
            return await self._stream()
        return await self._json()

    def client_left(self) -> None:
        if self.log.outcome == "running":
            self.log.outcome = "disconnected"
            self.log.disconnected_at = self.loop.time()
            self._persist()

    def end(self) -> None:
        if self.running:
            runs = self.emu._runs.get((self.emu.app_id, self.chat_id))
            if runs is not None:
                runs.discard(self)
                if not runs:
                    del self.emu._runs[(self.emu.app_id, self.chat_id)]
        self.log.closed.set()

    def stop(self) -> None:
        """``/api/v2/chat/stop``: end the run early; the stream still ends normally."""
        self.stopped = True
        if self.feed is not None:
            self.feed.interrupt()

    def _finished(self) -> None:
        self.log.outcome = "completed"
        self.log.finished_at = self.loop.time()

    def _begin(self, last_message: Any) -> None:
        emu, body = self.emu, self.body
        self.text = _message_text(last_message)
        data_id = last_message.get("dataId") if isinstance(last_message, dict) else None
        self.human_id = str(data_id or _new_id())
        self.ai_id = str(body.get("responseChatItemId") or _new_id())
        chat = emu.chat(self.chat_id) if self.chat_id else None
        request_variables = body.get("variables")
        self.variables = {
            **(chat.variables if chat else {}),
            **(request_variables if isinstance(request_variables, dict) else {}),
        }
        source = emu.brain.reply(self.chat_id, self.text, dict(self.variables))
        self.feed = _BrainFeed(_with_big_text(source) if self.fault == "big" else source)
        self.running = True
        emu._runs.setdefault((emu.app_id, self.chat_id), set()).add(self)

    # -- failures before any output

    def _refuse(self, error: dict[str, Any], *, known: bool) -> web.Response:
        self.log.outcome = "refused"
        if self.is_stream:
            # No SSE headers yet: one error frame in an ordinary JSON-typed body, HTTP 200.
            return web.Response(body=_error_frame(error), content_type="application/json")
        if known:
            return _known_error(self.emu, error["code"], error["statusText"], error["message"])
        return _generic_error(error["message"])

    async def _error_before(self) -> web.StreamResponse:
        self.log.outcome = "error"
        error = _error_body(510, "insufficientQuota", "账号余额不足")
        if not self.is_stream:
            return _known_error(self.emu, error["code"], error["statusText"], error["message"])
        self.response = web.StreamResponse(headers=SSE_HEADERS)
        await self.response.prepare(self.request)
        await self.response.write(_error_frame(error))
        await self.response.write_eof()
        return self.response

    # -- stream

    async def _stream(self) -> web.StreamResponse:
        fault, feed = self.fault, self.feed
        assert feed is not None
        response = self.response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(self.request)
        writer = _SseWriter(response, self.log, detail=self.detail, heartbeat=self.emu.heartbeat_interval)
        try:
            if fault in ("no_first_token", "heartbeats_only"):
                await self._say_nothing(writer)
            if self.version == "v2":
                writer.event("flowNodeResponse", orjson.dumps(self._node_responses()[0]))
            writer.event("flowNodeStatus", orjson.dumps({"status": "running", "name": "AI 对话"}))
            cut_short = await self._stream_reply(writer)
        except _BrainFailed as e:
            writer.event("error", orjson.dumps({"message": e.args[0]}))
            await writer.flush()
            await response.write_eof()
            self.log.outcome = "error"
            return response
        finally:
            await feed.close()
        if cut_short or fault in _CUT_SHORT:
            return await self._cut_short(writer)
        if fault == "interactive":
            writer.event("interactive", orjson.dumps({"interactive": _INTERACTIVE}))
        nodes = self._node_responses()
        if self.version == "v2":
            writer.event("flowNodeResponse", orjson.dumps(nodes[1]))
        duration = round(self.loop.time() - self.log.started, 2)
        writer.event("workflowDuration", orjson.dumps({"durationSeconds": duration}))
        await writer.flush()
        if self.emu.save_delay > 0:
            await asyncio.sleep(self.emu.save_delay)
        self._persist()  # FastGPT saves the chat between workflowDuration and the stop chunk
        writer.event("answer", _stop_json(self.version))
        writer.event("answer", b"[DONE]")
        if self.version == "v1":
            writer.event("flowResponses", orjson.dumps(nodes))
        await writer.flush()
        await response.write_eof()
        self._finished()
        return response

    async def _say_nothing(self, writer: _SseWriter) -> None:
        """``no_first_token`` / ``heartbeats_only``: until the client leaves (never returns)."""
        interval = self.emu.heartbeat_interval
        if self.fault == "no_first_token" or interval <= 0:
            await _until_client_leaves(self.request)
        while True:
            await writer.pause(interval)

    async def _stream_reply(self, writer: _SseWriter) -> bool:
        """Send the brain's reply; True when a cut-short fault struck before its end."""
        emu, fault, feed = self.emu, self.fault, self.feed
        assert feed is not None
        answer = "fastAnswer" if fault == "fast_answer" else "answer"
        sent = 0
        if fault == "unknown_events":
            self._send_unknown(writer, 0)
        while not self.stopped and (item := await feed.next(writer)) is not None:
            if isinstance(item, dict):
                self._update_variables(item)
                writer.event("updateVariables", orjson.dumps(self.variables))
                continue
            for piece in _cut(item, max(1, emu.chunk_chars)):
                await writer.pause(emu.first_chunk_delay if sent == 0 else emu.chunk_delay)
                if fault == "reasoning" and sent % 2 == 0:
                    for thought in _cut(_REASONING_TEXT, 5):
                        writer.event("answer", _reasoning_json(thought))
                if fault == "unknown_events":
                    writer.speech(answer, _chunk_json_with_unknown_fields(piece, sent))
                else:
                    writer.speech(answer, _chunk_json(piece))
                self.reply_parts.append(piece)
                sent += 1
                if fault == "malformed":
                    writer.raw(_MALFORMED_FRAMES[sent % len(_MALFORMED_FRAMES)])
                elif fault == "unknown_events" and sent % 3 == 0:
                    self._send_unknown(writer, sent // 3)
                if fault in _CUT_SHORT and sent >= emu.fault_after_chunks:
                    return True
                if self.stopped:
                    break
                await writer.flush(at_least=_FLUSH_BYTES)
        return False

    def _send_unknown(self, writer: _SseWriter, n: int) -> None:
        name, payload = _UNKNOWN_PAYLOADS[n % len(_UNKNOWN_PAYLOADS)]
        if self.detail:
            writer.raw(_frame(name, orjson.dumps(payload)))
        else:
            writer.raw(_frame(None, orjson.dumps({"unknownKind": name, **payload})))

    async def _cut_short(self, writer: _SseWriter) -> web.StreamResponse:
        response = self.response
        assert response is not None
        fault = self.fault
        if fault == "error_mid":
            writer.event("error", orjson.dumps({"message": "emulated workflow failure"}))
        await writer.flush()
        if fault == "stall":
            await _until_client_leaves(self.request)
        if fault == "abort":
            self.log.outcome = "aborted"
            self._persist()
            if self.request.transport is not None:
                self.request.transport.abort()
            return response
        await response.write_eof()
        self.log.outcome = "error" if fault == "error_mid" else "eof"
        if fault == "eof":
            self._persist()
        return response

    # -- non-stream

    async def _json(self) -> web.StreamResponse:
        emu, fault, feed = self.emu, self.fault, self.feed
        assert feed is not None
        if fault in _SILENT_FAULTS:
            await feed.close()
            await _until_client_leaves(self.request)
        if fault == "abort":
            await feed.close()
            self.log.outcome = "aborted"
            if self.request.transport is not None:
                self.request.transport.abort()
            return web.Response()
        try:
            while not self.stopped and (item := await feed.next(None)) is not None:
                if isinstance(item, dict):
                    self._update_variables(item)
                else:
                    self.reply_parts.append(item)
        except _BrainFailed as e:
            self.log.outcome = "error"
            return _generic_error(e.args[0])
        finally:
            await feed.close()
        chunks = len(_cut("".join(self.reply_parts), max(1, emu.chunk_chars)))
        delay = emu.first_chunk_delay + emu.chunk_delay * max(0, chunks - 1)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "error_mid":
            self.log.outcome = "error"
            return _generic_error("emulated workflow failure")
        self._persist()
        body = orjson.dumps(self._json_body())
        if fault == "malformed":
            body = b"<html><body>502 Bad Gateway</body></html>" + body[:40]
        if fault == "eof":
            return await self._truncated_json(body)
        self._finished()
        return web.Response(body=body, content_type="application/json")

    def _json_body(self) -> dict[str, Any]:
        reply = "".join(self.reply_parts)
        content: str | list[dict[str, Any]] = reply
        if self.fault == "array_content":
            half = len(reply) // 2
            # The newest builds drop `type`: the second item is identified by its key alone.
            content = [_text_value(reply[:half]), {"text": {"content": reply[half:]}}]
        elif self.fault == "reasoning":
            content = [{"type": "reasoning", "reasoning": {"content": _REASONING_TEXT}}, _text_value(reply)]
        elif self.fault == "interactive":
            content = [_text_value(reply), {"type": "interactive", "interactive": _INTERACTIVE}]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        out: dict[str, Any] = {
            "id": self.chat_id,
            "model": "",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1},
            "choices": [{"message": message, "finish_reason": "stop", "index": 0}],
        }
        if self.detail:
            out["responseData"] = self._node_responses()
            out["newVariables"] = self.variables
        if self.fault == "unknown_events":
            out["chatTitle"] = "交通事故"
            message["responseValueId"] = "rv-1"
        return out

    async def _truncated_json(self, body: bytes) -> web.StreamResponse:
        response = self.response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(self.request)
        await response.write(body[: len(body) // 2])
        await response.write_eof()
        self.log.outcome = "eof"
        return response

    # -- the chat store

    def _update_variables(self, update: dict[str, Any]) -> None:
        self.variables.update(update)
        if self.chat_id:
            self.emu._stored_chat(self.chat_id).variables = dict(self.variables)

    def _persist(self) -> None:
        """Save the turn as FastGPT does when a run ends (also when the client left mid-run)."""
        if not self.running or self.persisted or not self.chat_id or self.fault in _ERROR_FAULTS:
            return
        self.persisted = True
        chat = self.emu._stored_chat(self.chat_id)
        now = _now_iso()
        reply = "".join(self.reply_parts)
        chat.variables = dict(self.variables)
        if chat.awaiting_interactive and chat.records and chat.records[-1]["obj"] == "AI":
            # Answering an interactive node resumes the run: no new pair, the last AI record grows.
            chat.records[-1]["value"].append(_text_value(reply))
        else:
            chat.records.append(self._record(self.human_id, "Human", [_text_value(self.text)], now))
            values = [_text_value(reply)]
            if self.fault == "interactive":
                values.append({"type": "interactive", "interactive": _INTERACTIVE})
            chat.records.append(self._record(self.ai_id, "AI", values, now))
        chat.awaiting_interactive = self.fault == "interactive"
        chat.node_responses[self.ai_id] = self._node_responses()
        chat.update_time = now
        chat.title = chat.title or self.text[:20] or "新对话"

    @staticmethod
    def _record(data_id: str, obj: str, value: list[dict[str, Any]], time: str) -> dict[str, Any]:
        return {"_id": _new_id(), "dataId": data_id, "obj": obj, "value": value, "time": time}

    def _node_responses(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "workflowStart",
                "nodeId": "workflowStart",
                "moduleName": "流程开始",
                "moduleType": "workflowStart",
                "runningTime": 0,
            },
            {
                "id": "chatNode",
                "nodeId": "chatNode",
                "moduleName": "AI 对话",
                "moduleType": "chatNode",
                "runningTime": round(self.loop.time() - self.log.started, 2),
                "totalPoints": 0,
                "model": "emulator",
                "query": self.text,
                "textOutput": "".join(self.reply_parts),
            },
        ]


async def stop_chat(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    body = _body(request)
    if (refused := _guard(request, emu, body.get("appId"))) is not None:
        return refused
    for turn in list(emu._runs.get((emu.app_id, str(body.get("chatId") or "")), ())):
        turn.stop()
    return _envelope()


# -- chat history and records -----------------------------------------------------------------


def _body(request: web.Request) -> dict[str, Any]:
    body = request[REQUEST_BODY]
    return body if isinstance(body, dict) else {}


def _guard(request: web.Request, emu: Emulator, app_id: Any) -> web.Response | None:
    """The CRUD endpoints need the key and an explicit appId of the key's app."""
    if not _authorized(request, emu):
        return _known_error(emu, 514, "unAuthApiKey", "Api Key 不合法")
    if not app_id:
        return _known_error(emu, 403, "unAuthorization", "appId is required with an API key")
    if app_id != emu.app_id:
        return _known_error(emu, 403, "unAuthorization", "this API key cannot access that app")
    return None


async def get_histories(request: web.Request) -> web.Response:
    emu, body = request.app[EMULATOR], _body(request)
    if (refused := _guard(request, emu, body.get("appId"))) is not None:
        return refused
    chats = sorted(
        (c for c in emu.chats.values() if c.app_id == emu.app_id and c.records),
        key=lambda c: (c.top, c.update_time),
        reverse=True,
    )
    offset, size = max(0, _as_int(body.get("offset"), 0)), max(0, _as_int(body.get("pageSize"), 20))
    page = [
        {
            "chatId": c.chat_id,
            "updateTime": c.update_time,
            "appId": c.app_id,
            "customTitle": c.custom_title,
            "title": c.title,
            "top": c.top,
        }
        for c in chats[offset : offset + size]
    ]
    return _envelope({"list": page, "total": len(chats)})


async def update_history(request: web.Request) -> web.Response:
    emu, body = request.app[EMULATOR], _body(request)
    if (refused := _guard(request, emu, body.get("appId"))) is not None:
        return refused
    chat = emu.chat(str(body.get("chatId") or ""))
    if chat is not None:
        for key, attr in (("title", "title"), ("customTitle", "custom_title"), ("top", "top")):
            if key in body:
                setattr(chat, attr, body[key])
        chat.update_time = _now_iso()
    return _envelope()


async def del_history(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := _guard(request, emu, query.get("appId"))) is not None:
        return refused
    emu.chats.pop((emu.app_id, query.get("chatId", "")), None)
    return _envelope()


async def clear_histories(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := _guard(request, emu, query.get("appId"))) is not None:
        return refused
    for key in [k for k in emu.chats if k[0] == emu.app_id]:
        del emu.chats[key]
    return _envelope()


async def init_chat(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := _guard(request, emu, query.get("appId"))) is not None:
        return refused
    chat_id = query.get("chatId", "")
    chat = emu.chat(chat_id)
    return _envelope(
        {
            "chatId": chat_id,
            "appId": emu.app_id,
            "title": chat.title if chat else "",
            "userAvatar": "",
            "variables": dict(chat.variables) if chat else {},
            "app": {
                "name": "事故信息采集",
                "avatar": "",
                "intro": "",
                "type": "advanced",
                "chatConfig": {},
                "pluginInputs": [],
            },
        }
    )


async def get_pagination_records(request: web.Request) -> web.Response:
    emu, body = request.app[EMULATOR], _body(request)
    if (refused := _guard(request, emu, body.get("appId"))) is not None:
        return refused
    chat = emu.chat(str(body.get("chatId") or ""))
    records = chat.records if chat else []
    # `offset` counts back from the newest record; the page itself is chronological.
    end = max(0, len(records) - max(0, _as_int(body.get("offset"), 0)))
    start = max(0, end - max(0, _as_int(body.get("pageSize"), 10)))
    return _envelope({"list": records[start:end], "total": len(records)})


async def get_res_data(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := _guard(request, emu, query.get("appId"))) is not None:
        return refused
    chat = emu.chat(query.get("chatId", ""))
    return _envelope(chat.node_responses.get(query.get("dataId", ""), []) if chat else [])


async def delete_records(request: web.Request) -> web.Response:
    """``contentId`` from the query, or ``contentId`` / ``contentIds`` from a JSON body."""
    emu, query, body = request.app[EMULATOR], request.query, _body(request)
    if (refused := _guard(request, emu, query.get("appId") or body.get("appId"))) is not None:
        return refused
    ids: set[str] = set()
    for source in (query, body):
        if source.get("contentId"):
            ids.add(str(source["contentId"]))
    if isinstance(body.get("contentIds"), list):
        ids.update(str(i) for i in body["contentIds"])
    chat = emu.chat(str(query.get("chatId") or body.get("chatId") or ""))
    if chat is not None and ids:
        chat.records = [r for r in chat.records if r["dataId"] not in ids]
    return _envelope()


# -- control endpoints (for out-of-process users) ---------------------------------------------


async def control_requests(request: web.Request) -> web.Response:
    return _json_response([asdict(r) for r in request.app[EMULATOR].requests])


async def control_clear_requests(request: web.Request) -> web.Response:
    request.app[EMULATOR].requests.clear()
    return _json_response({"ok": True})


async def control_chats(request: web.Request) -> web.Response:
    chats = request.app[EMULATOR].chats.values()
    return _json_response(
        [{"appId": c.app_id, "chatId": c.chat_id, "variables": c.variables, "records": c.records} for c in chats]
    )


async def control_streams(request: web.Request) -> web.Response:
    return _json_response([log.summary() for log in request.app[EMULATOR].streams])


async def control_fault(request: web.Request) -> web.Response:
    body = _body(request)
    count = body.get("count")
    try:
        request.app[EMULATOR].set_fault(body.get("mode"), None if count is None else int(count))
    except (TypeError, ValueError) as e:
        return _json_response({"ok": False, "error": str(e)}, 400)
    return _json_response({"ok": True})


async def control_reset(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    emu.reset()
    emu.set_fault(None)
    return _json_response({"ok": True})


# -- command line -----------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a FastGPT OpenAPI emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--api-key", default="fastgpt-test")
    parser.add_argument("--app-id", default="app1")
    parser.add_argument("--reply", action="append", metavar="TEXT", help="a scripted reply (repeatable: used in turn)")
    parser.add_argument("--brain", choices=("scripted", "local"), default="scripted")
    parser.add_argument("--chunk-chars", type=int, default=4)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--first-chunk-delay", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval in seconds")
    parser.add_argument("--version", choices=("v1", "v2"), default="v1")
    parser.add_argument("--fault", choices=sorted(FAULT_MODES))
    parser.add_argument("--access-log", action="store_true", help="log every request (slows benchmarks)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    brain: Brain = LocalBrain() if args.brain == "local" else ScriptedBrain(args.reply or [DEFAULT_REPLY])
    app = create_emulator_app(
        brain,
        api_key=args.api_key,
        app_id=args.app_id,
        chunk_chars=args.chunk_chars,
        chunk_delay=args.chunk_delay,
        first_chunk_delay=args.first_chunk_delay,
        heartbeat_interval=args.heartbeat,
        version=args.version,
        fault=args.fault,
    )
    access_log = None
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        access_log = logging.getLogger("aiohttp.access")
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        handler_cancellation=True,
        access_log=access_log,
    )


if __name__ == "__main__":
    main()
