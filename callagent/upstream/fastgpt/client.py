"""FastGPT OpenAPI client: one pooled aiohttp session, every turn ``stream:true, detail:true``.

It works on every release from 4.8.12 on without being told which (``docs/operations.md``,
"FastGPT releases"). Where releases differ it probes and remembers what answered: the record
delete API (``item/delete`` with the ids in the query AND the body, then ``record/delete``),
the record listing, and the stop API (``/api/v2/chat/stop``, a 404 before about 4.14.5).
``FASTGPT_PATHS`` (``legacy`` or ``v2``) pins a path family instead.

What counts as speech: ``answer`` and ``fastAnswer`` content (never ``reasoning_content``), and
the question of an interactive node (``interactive.py``). The reply ends at the first of
``workflowDuration`` (4.9.7+), the stop chunk and ``[DONE]``: ``END_OF_SPEECH``, after which
the engine drains the stream while FastGPT saves the chat.

A chat still running (a barge-in or a timeout just closed its stream) refuses a new run with
504001 on 4.14.11+: the client stops the old run where the stop API exists and retries
within the turn's first-token deadline. An interrupted run is saved only when FastGPT's
workflow returns, so deleting its records stops the run and waits (bounded) until they exist.
Every failure is mapped to a typed error at one edge (``errors.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson
import structlog

from ...errors import UpstreamBusy, UpstreamError, UpstreamProtocol
from ..base import END_OF_SPEECH, KEEPALIVE, UpstreamChunk, UpstreamRecords, UpstreamTurn, VariablesUpdate
from ..http import Peer, frame_json, post_stream, read_small, request_small, sse_events
from . import interactive
from .errors import error_from, error_from_body
from .interactive import INTERACTIVE_KEY

log = structlog.get_logger(component="callagent.upstream.fastgpt")
_PEER = Peer("FastGPT", log, "fastgpt")

CHAT = "/api/core/chat"
PATHS: dict[str, dict[str, tuple[str, ...]]] = {
    # Tried in order until one is not a 404; the one that answered is tried first from then on.
    "auto": {
        "delete_record": (f"{CHAT}/item/delete", f"{CHAT}/record/delete"),
        "records": (f"{CHAT}/getPaginationRecords", f"{CHAT}/record/getPaginationRecords"),
        "delete_history": (f"{CHAT}/delHistory",),
    },
    "legacy": {
        "delete_record": (f"{CHAT}/item/delete",),
        "records": (f"{CHAT}/getPaginationRecords",),
        "delete_history": (f"{CHAT}/delHistory",),
    },
    "v2": {
        "delete_record": (f"{CHAT}/record/delete",),
        "records": (f"{CHAT}/record/getPaginationRecords",),
        "delete_history": (f"{CHAT}/history/delHistory",),
    },
}
STOP_PATH = "/api/v2/chat/stop"
INIT_PATH = f"{CHAT}/init"

REQUEST_TIMEOUT = 10.0
"""Deadline of one record, history, stop or readiness call."""
BUSY_RETRY_FOR = 30.0
"""504001 is retried this long at most; the turn's first-token deadline usually ends it first."""
BUSY_BACKOFF = (0.05, 0.1, 0.2, 0.4)
SAVE_WAIT = 3.0
"""How long deleting an interrupted turn waits for FastGPT to save it."""
SAVE_POLL = 0.05
_REMEMBERED = 4096


class _PathMissing(Exception):
    """HTTP 404: this release has no such API."""


class FastGPTClient:
    name = "fastgpt"
    history_turns = 0  # FastGPT keeps the conversation itself (chatId)

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        app_id: str,
        paths: str = "auto",
        connect_timeout: float = 3.0,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._app_id = app_id
        self._paths = {name: list(candidates) for name, candidates in PATHS[paths].items()}
        self._stop_api: bool | None = None  # None: not tried yet
        # No total deadline on a turn: the engine owns first-token, idle and turn deadlines.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
        # Every other call (readiness, records, stop) is whole within this, so none can hang a caller.
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=connect_timeout)
        # Record ids this process knows about: runs cut before FastGPT saved them, and turns
        # that created no record (answers to an interactive node, questions callagent asked).
        self._unsaved = _Recent()
        self._recordless = _Recent()

    def __repr__(self) -> str:
        return f"FastGPTClient(base_url={self._base!r}, app_id={self._app_id!r})"

    # -- turns -----------------------------------------------------------------------------

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        pending = turn.variables.get(INTERACTIVE_KEY)
        question = pending if isinstance(pending, dict) and pending.get("type") else None
        text = turn.text
        if question is not None:
            # The run is paused at an interactive node: these words answer it, and the resumed
            # run adds no record of its own (FastGPT appends to the paused run's AI record).
            self._recordless.add(turn.human_record_id, turn.ai_record_id)
            yield UpstreamRecords()
            step = interactive.answer(question, text)
            if step.send is None:
                yield VariablesUpdate({INTERACTIVE_KEY: step.state})
                yield step.speech
                return
            text = step.send
        body = orjson.dumps(
            {
                "appId": self._app_id,  # an account key needs it; an app key ignores it
                "chatId": turn.session_id,
                "stream": True,
                "detail": True,
                "responseChatItemId": turn.ai_record_id,
                "variables": {k: v for k, v in turn.variables.items() if not k.startswith("_")},
                "messages": [{"role": "user", "content": text, "dataId": turn.human_record_id}],
            }
        )
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BUSY_RETRY_FOR
        for attempt in itertools.count():
            # One completions call, read up to [DONE], in this one generator (every chunk of
            # every turn passes through it); a 504001 before any chunk is tried again.
            started = ended = asked = False
            try:
                response = await self._post_completions(body)
                async with response:
                    if response.status != 200:
                        raise error_from_body(response.status, await read_small(response))
                    if "text/event-stream" not in response.headers.get("Content-Type", ""):
                        raise error_from_body(200, await read_small(response))
                    try:
                        async for event, data in sse_events(response, _PEER):
                            if ended:  # FastGPT's bookkeeping after the end of speech
                                if data == b"[DONE]":
                                    return
                                continue
                            if event == b"answer" or event is None:  # the reply's text: most frames
                                end = data == b"[DONE]" or (b'"stop"' in data and _is_stop_chunk(data))
                                chunk = KEEPALIVE if end else _content_of(data)
                            elif event == b"interactive":
                                asked_now = interactive.question_of(frame_json(data, _PEER))
                                asked = started = True
                                yield VariablesUpdate({INTERACTIVE_KEY: asked_now})
                                yield interactive.speech(asked_now)
                                continue
                            else:
                                end = event == b"workflowDuration"
                                chunk = KEEPALIVE if end else _chunk_of(event, data)
                            if end:
                                ended = True
                                if question is not None and not asked:
                                    yield VariablesUpdate({INTERACTIVE_KEY: None})  # the question was answered
                                yield END_OF_SPEECH
                                if data == b"[DONE]":
                                    return
                            else:
                                started = True
                                yield chunk
                    except (GeneratorExit, asyncio.CancelledError):
                        if not ended:
                            self._unsaved.add(turn.human_record_id, turn.ai_record_id)
                        raise
                    if not ended:
                        raise UpstreamProtocol("FastGPT closed the stream before [DONE]")
                    return
            except UpstreamBusy:
                if started or loop.time() >= give_up:
                    raise
            if attempt == 0:
                log.info("fastgpt_chat_is_generating", session_id=turn.session_id, turn_id=turn.turn_id)
                await self._stop(turn.session_id)
            await asyncio.sleep(BUSY_BACKOFF[min(attempt, len(BUSY_BACKOFF) - 1)])

    async def _post_completions(self, body: bytes) -> aiohttp.ClientResponse:
        headers = {**self._headers, "Content-Type": "application/json"}
        url = f"{self._base}/api/v1/chat/completions"
        return await post_stream(self._http, _PEER, url, body=body, headers=headers, client_timeout=self._timeout)

    # -- records and sessions --------------------------------------------------------------

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        ids = [i for i in record_ids if i not in self._recordless]
        if len(ids) < len(record_ids):
            log.info("fastgpt_turn_created_no_records", session_id=session_id, records=record_ids)
        if not ids:
            return
        if any(i in self._unsaved for i in ids):
            # Cut mid-run: FastGPT saves the turn when its workflow returns, maybe later.
            await self._stop(session_id)
            await self._until_saved(session_id, ids)
        for record_id in ids:
            ref = {"appId": self._app_id, "chatId": session_id, "contentId": record_id}
            # Query AND body: 4.14.0-4.14.10 read the body only, the others the query.
            await self._call("delete_record", "DELETE", query=ref, body=ref)
        self._unsaved.discard(*ids)

    async def delete_session(self, session_id: str) -> None:
        await self._call("delete_history", "DELETE", query={"appId": self._app_id, "chatId": session_id})

    async def check_ready(self) -> None:
        await self._envelope("GET", INIT_PATH, query={"appId": self._app_id, "chatId": "callagent-readyz"})

    async def _until_saved(self, session_id: str, ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SAVE_WAIT
        page = {"appId": self._app_id, "chatId": session_id, "offset": 0, "pageSize": 10}
        while True:
            data = await self._call("records", "POST", body=page)
            items = data.get("list") if isinstance(data, dict) else None
            if any(isinstance(r, dict) and r.get("dataId") in ids for r in items or ()):
                return
            if loop.time() >= give_up:
                log.warning("fastgpt_records_not_saved_in_time", session_id=session_id, records=ids)
                return
            await asyncio.sleep(SAVE_POLL)

    async def _stop(self, session_id: str) -> None:
        """Stop the chat's run where the release has the stop API (remembering when it has not)."""
        if self._stop_api is False:
            return
        try:
            await self._envelope("POST", STOP_PATH, body={"appId": self._app_id, "chatId": session_id})
        except _PathMissing:
            self._stop_api = False
            log.info("fastgpt_has_no_stop_api")
        except UpstreamError as e:
            log.warning("fastgpt_stop_failed", session_id=session_id, error=e.msg)
        else:
            self._stop_api = True

    async def _call(
        self, api: str, method: str, *, query: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> Any:
        """Call ``api`` on the first of its paths that exists, and remember that path."""
        candidates = self._paths[api]
        for path in list(candidates):
            try:
                data = await self._envelope(method, path, query=query, body=body)
            except _PathMissing:
                continue
            if candidates[0] != path:
                candidates.remove(path)
                candidates.insert(0, path)
                log.info("fastgpt_path_learned", api=api, path=path)
            return data
        raise UpstreamError(f"FastGPT has none of the {api} APIs callagent knows ({', '.join(candidates)})")

    async def _envelope(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: dict[str, Any] | None = None
    ) -> Any:
        headers = self._headers if body is None else {**self._headers, "Content-Type": "application/json"}
        status, raw = await request_small(
            self._http,
            _PEER,
            method,
            self._base + path,
            failed="request failed",
            client_timeout=self._request_timeout,
            headers=headers,
            params=query,
            data=None if body is None else orjson.dumps(body),
        )
        if status == 404:
            raise _PathMissing(path)
        if status != 200:
            raise error_from_body(status, raw)
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocol(f"FastGPT answered {path} with non-JSON") from None
        if not isinstance(envelope, dict) or envelope.get("code") != 200:
            raise error_from(200, envelope)
        return envelope.get("data")


# -- stream parsing -------------------------------------------------------------------------


def _content_of(data: bytes) -> UpstreamChunk:
    """An answer frame's text (``KEEPALIVE`` when it has none)."""
    payload = frame_json(data, _PEER)
    try:
        content = payload["choices"][0]["delta"].get("content")
    except (TypeError, KeyError, IndexError, AttributeError):
        return KEEPALIVE
    return content if isinstance(content, str) and content else KEEPALIVE


def _chunk_of(event: bytes, data: bytes) -> UpstreamChunk:
    """What a frame other than an answer means for the turn, before the end of speech."""
    if event == b"fastAnswer":
        return _content_of(data)
    if event == b"updateVariables":
        payload = frame_json(data, _PEER)
        return VariablesUpdate(payload) if isinstance(payload, dict) else KEEPALIVE
    if event == b"error":
        raise error_from(200, frame_json(data, _PEER))
    return KEEPALIVE


def _is_stop_chunk(data: bytes) -> bool:
    """The answer chunk FastGPT sends once the chat is saved (the end signal before 4.9.7)."""
    payload = frame_json(data, _PEER)
    try:
        choice = payload["choices"][0]
        return bool(choice.get("finish_reason") == "stop" and not choice["delta"].get("content"))
    except (TypeError, KeyError, IndexError, AttributeError):
        return False


class _Recent:
    """A bounded set of record ids (the oldest forgotten first)."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, *ids: str) -> None:
        for i in ids:
            self._ids[i] = None
            self._ids.move_to_end(i)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def discard(self, *ids: str) -> None:
        for i in ids:
            self._ids.pop(i, None)

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._ids
