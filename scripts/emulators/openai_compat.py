"""An OpenAI-compatible chat completions server, as the servers callagent meets really behave.

``POST /v1/chat/completions`` (streaming and not) and ``GET /v1/models``, written from the
OpenAI chat completions reference and the deviations of the servers teams deploy:

- strict alternation (DeepSeek): two user (or two assistant) messages in a row, an assistant
  message first, or ``reasoning_content`` in an input message is a 400 (``strict=True``);
- reasoning: ``delta.reasoning_content`` (DeepSeek, DashScope) or ``delta.reasoning`` (newer
  vLLM) before the content, or ``<think>`` blocks inside the content (a model served without a
  reasoning parser);
- vLLM's mid-stream failure: ``data: {"error": {...}}`` then ``data: [DONE]``, on HTTP 200;
- ``: keep-alive`` comments while a request waits (DeepSeek);
- a usage chunk with empty ``choices`` after the finish chunk when ``stream_options.include_usage``.

The reply comes from a ``ScriptedBrain`` (fixed replies in turn, or a function of the messages),
cut into ``chunk_chars`` pieces, so ``<state>`` tags arrive split like a model's tokens.
A fault mode (``FAULT_MODES``, ``Emulator.set_fault`` or ``POST /__emulator/fault``) makes the
next calls misbehave. Everything a test asserts sits on the app under ``EMULATOR``: the request
bodies and one ``StreamLog`` per completions call (the server must run with
``handler_cancellation=True``, as aiohttp's test server does, to see a client leave at once).

Usage: ``python -m scripts.emulators.openai_compat --port 8001 [--reply TEXT ...] [--fault MODE]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from .common import DEFAULT_REPLY, FaultSwitch, ScriptedReplies, emulator_parser, pieces, serve

REASONING_TEXT: Final = "用户报告了交通事故，先确认是否有人受伤。"

FAULT_MODES: Final = frozenset(
    {
        "http500",  # HTTP 500 with an error body
        "http429",  # HTTP 429 rate limited
        "error_before",  # HTTP 200, then `data: {"error": ...}` and [DONE] before any content
        "error_mid",  # a few chunks, `data: {"error": ...}`, then [DONE] (vLLM)
        "error_object",  # a few chunks, older vLLM's bare `{"object": "error", ...}`, then [DONE]
        "eof",  # a few chunks, then the body ends without finish_reason or [DONE]
        "no_first_token",  # headers, then silence until the client leaves
        "stall",  # a few chunks, then silence until the client leaves
        "keepalive_only",  # only `: keep-alive` comments until the client leaves
        "malformed",  # garbage lines interleaved, the stream still completes
        "unknown_fields",  # unknown fields, empty-choices and null-content chunks, still completes
        "reasoning",  # `delta.reasoning_content` chunks first (DeepSeek, DashScope)
        "reasoning_vllm",  # `delta.reasoning` chunks first (newer vLLM)
        "think",  # a `<think>...</think>` block at the start of the content
        "slow_headers",  # Emulator.slow_headers_delay before the response starts
        "abort",  # the TCP connection is aborted mid-stream
    }
)
_CUT_SHORT: Final = frozenset({"error_mid", "error_object", "eof", "stall", "abort"})
SSE_HEADERS: Final = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


class ScriptedBrain(ScriptedReplies[[list[dict[str, Any]]]]):
    """Replies in turn (the last one repeats), or ``reply(messages) -> text``."""


@dataclass(slots=True)
class StreamLog:
    """One completions call. Times are ``loop.time()`` values."""

    fault: str | None
    started: float
    first_chunk_at: float | None = None
    finished_at: float | None = None
    disconnected_at: float | None = None
    outcome: str = "running"  # completed | disconnected | error | eof | aborted | refused
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Emulator(FaultSwitch):
    """Run-time knobs and everything the server has seen."""

    def __init__(self, brain: ScriptedBrain, *, api_key: str, model: str, chunk_chars: int, strict: bool) -> None:
        super().__init__(FAULT_MODES)
        self.brain = brain
        self.api_key = api_key
        self.model = model
        self.chunk_chars = chunk_chars
        self.chunk_delay = 0.0
        self.strict = strict
        self.fault_after_chunks = 3
        self.slow_headers_delay = 10.0
        self.keepalive_interval = 0.1
        self.requests: list[dict[str, Any]] = []
        self.streams: list[StreamLog] = []


EMULATOR: Final = web.AppKey("openai_emulator", Emulator)


def create_emulator_app(
    brain: ScriptedBrain | None = None,
    *,
    api_key: str = "openai-test",
    model: str = "test-model",
    chunk_chars: int = 4,
    strict: bool = True,
) -> web.Application:
    app = web.Application()
    app[EMULATOR] = Emulator(
        brain or ScriptedBrain(), api_key=api_key, model=model, chunk_chars=chunk_chars, strict=strict
    )
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/__emulator/fault", control_fault)
    app.router.add_get("/__emulator/requests", control_requests)
    return app


# -- the API ----------------------------------------------------------------------------------


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _authorized(request: web.Request, emu: Emulator) -> bool:
    return not emu.api_key or request.headers.get("Authorization") == f"Bearer {emu.api_key}"


async def models(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    if not _authorized(request, emu):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    return web.json_response({"object": "list", "data": [{"id": emu.model, "object": "model", "owned_by": "emulator"}]})


def check_messages(messages: Any) -> str | None:
    """What a strict server (DeepSeek) refuses in ``messages``; None when it accepts them."""
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty list is required"
    last_role = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            return f"messages[{index}]: invalid message"
        if "reasoning_content" in message:
            return "The reasoning_content is an intermediate result for display purposes only and will not be included in the context for inference. Please remove the reasoning_content from your input message."  # noqa: E501
        role = message["role"]
        if role == "system":
            continue
        if last_role is None and role != "user":
            return "The first non-system message must be a user message."
        if role == last_role:
            return (
                f"The model does not support successive {role} messages (messages[{index - 1}] and "
                f"messages[{index}] in your input). You should interleave the user/assistant messages."
            )
        last_role = role
    if last_role != "user":
        return "The last message must be a user message."
    return None


async def completions(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR]
    if not _authorized(request, emu):
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return _error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    emu.requests.append(body)
    if not body.get("model"):
        return _error(400, "you must provide a model parameter")
    problem = check_messages(body.get("messages")) if emu.strict else None
    if problem:
        return _error(400, problem)
    fault = emu.take_fault()
    if fault == "http500":
        return _error(500, "The server had an error while processing your request.", "server_error")
    if fault == "http429":
        return _error(429, "Rate limit reached for requests", "rate_limit_error", "rate_limit_exceeded")
    reply = emu.brain.reply(body["messages"])
    if not body.get("stream"):
        return web.json_response(_completion(emu.model, reply), dumps=lambda o: orjson.dumps(o).decode())
    return await _Stream(request, emu, fault, body).run(reply)


def _completion(model: str, reply: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-emulator",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": len(reply), "total_tokens": len(reply) + 1},
    }


class _Stream:
    """One streamed completion, faults included."""

    def __init__(self, request: web.Request, emu: Emulator, fault: str | None, body: dict[str, Any]) -> None:
        self.request, self.emu, self.fault = request, emu, fault
        self.usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.loop = asyncio.get_running_loop()
        self.log = StreamLog(fault, self.loop.time())
        emu.streams.append(self.log)
        self.response = web.StreamResponse(headers=SSE_HEADERS)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload = {
            "id": "chatcmpl-emulator",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.emu.model,
            "choices": [choice],
            **extra,
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    async def run(self, reply: str) -> web.StreamResponse:
        try:
            if self.fault == "slow_headers":
                await asyncio.sleep(self.emu.slow_headers_delay)
            await self.response.prepare(self.request)
            await self._body(reply)
        except (asyncio.CancelledError, ConnectionResetError):
            self.log.outcome, self.log.disconnected_at = "disconnected", self.loop.time()
            raise
        finally:
            self.log.closed.set()
        return self.response

    async def _send(self, data: bytes) -> None:
        await self.response.write(data)
        if self.emu.chunk_delay:
            await asyncio.sleep(self.emu.chunk_delay)

    async def _body(self, reply: str) -> None:
        emu, fault, send = self.emu, self.fault, self._send
        if fault == "error_before":
            await send(b'data: {"error":{"message":"model is overloaded","type":"server_error","code":503}}\n\n')
            await send(b"data: [DONE]\n\n")
            self.log.outcome = "error"
            return
        if fault in ("no_first_token", "keepalive_only"):
            while True:
                await (send(b": keep-alive\n\n") if fault == "keepalive_only" else asyncio.sleep(1))
                await asyncio.sleep(emu.keepalive_interval)
        await send(self._chunk({"role": "assistant", "content": ""}))
        if fault in ("reasoning", "reasoning_vllm"):
            key = "reasoning_content" if fault == "reasoning" else "reasoning"
            for piece in pieces(REASONING_TEXT, emu.chunk_chars):
                await send(self._chunk({key: piece, "content": None}))
        if fault == "think":
            reply = f"<think>{REASONING_TEXT}</think>\n\n{reply}"
        for sent, piece in enumerate(pieces(reply, emu.chunk_chars)):
            if fault in _CUT_SHORT and sent >= emu.fault_after_chunks:
                await self._cut_short()
                return
            if fault == "malformed":
                await send(b"data: {not json\n\nthis is not a field\n\n")
            if fault == "unknown_fields":
                await send(b'data: {"id":"x","object":"chat.completion.chunk","choices":[],"x_extra":1}\n\n')
                await send(self._chunk({"content": None}, None, system_fingerprint="fp_x", x_vendor={"a": 1}))
            await send(self._chunk({"content": piece}))
            if self.log.first_chunk_at is None:
                self.log.first_chunk_at = self.loop.time()
        await send(self._chunk({}, "stop"))
        if self.usage:
            usage = {"prompt_tokens": 1, "completion_tokens": len(reply), "total_tokens": len(reply) + 1}
            await send(b"data: " + orjson.dumps({"id": "chatcmpl-emulator", "choices": [], "usage": usage}) + b"\n\n")
        await send(b"data: [DONE]\n\n")
        self.log.outcome, self.log.finished_at = "completed", self.loop.time()

    async def _cut_short(self) -> None:
        fault = self.fault
        if fault == "error_mid":
            error = {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}
            await self._send(b"data: " + orjson.dumps(error) + b"\n\n")
            await self._send(b"data: [DONE]\n\n")
            self.log.outcome = "error"
        elif fault == "error_object":
            error = {"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400}
            await self._send(b"data: " + orjson.dumps(error) + b"\n\n")
            await self._send(b"data: [DONE]\n\n")
            self.log.outcome = "error"
        elif fault == "stall":
            await asyncio.Event().wait()  # until the client leaves (the handler is cancelled)
        elif fault == "abort":
            self.log.outcome = "aborted"
            if self.request.transport is not None:
                self.request.transport.abort()
        else:
            self.log.outcome = "eof"


# -- control ----------------------------------------------------------------------------------


async def control_fault(request: web.Request) -> web.Response:
    data = await request.json()
    try:
        request.app[EMULATOR].set_fault(data.get("mode"), data.get("count"))
    except ValueError as e:
        return web.json_response({"ok": False, "error": str(e)}, status=400)
    return web.json_response({"ok": True})


async def control_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].requests, dumps=lambda o: orjson.dumps(o).decode())


def main(argv: Sequence[str] | None = None) -> None:
    parser = emulator_parser(
        "scripts.emulators.openai_compat",
        "Serve an OpenAI-compatible chat completions emulator.",
        port=8001,
        api_key="openai-test",
        api_key_help="the key required ('' accepts any)",
        fault_modes=FAULT_MODES,
    )
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--chunk-chars", type=int, default=4)
    parser.add_argument("--lenient", action="store_true", help="accept any message order (not DeepSeek-strict)")
    args = parser.parse_args(argv)
    app = create_emulator_app(
        ScriptedBrain(args.reply or [DEFAULT_REPLY]),
        api_key=args.api_key,
        model=args.model,
        chunk_chars=args.chunk_chars,
        strict=not args.lenient,
    )
    app[EMULATOR].set_fault(args.fault)
    app[EMULATOR].chunk_delay = args.chunk_delay
    serve(app, args)


if __name__ == "__main__":
    main()
