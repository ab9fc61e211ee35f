"""FastGPT's wire formats: SSE frames and chunks, the JSON envelope, error bodies.

Frames are ``event: <name>``, one ``data: <single-line JSON>`` line, a blank line; without ``detail`` only answer-like
frames (unnamed) and errors are sent. ``SseWriter`` buffers frames, writes them at await points
and sends empty-content heartbeats on silence, as FastGPT does every 10 s.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from aiohttp import web

from .state import Emulator, StreamLog

FLUSH_BYTES: Final = 64 * 1024

_LEAVE_POLL: Final = 1.0  # fallback check for a gone client when the handler is not cancelled

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream;charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}

_CHUNK_HEAD: Final = b'{"id":"","object":"","created":0,"model":"","choices":[{"delta":{"role":"assistant","content":'
_CHUNK_TAIL: Final = b'},"index":0,"finish_reason":null}]}'
_UNNAMED_WITHOUT_DETAIL: Final = frozenset({"answer", "fastAnswer"})


def chunk_json(text: str) -> bytes:
    return _CHUNK_HEAD + orjson.dumps(text) + _CHUNK_TAIL


def stop_json(content_null: bool) -> bytes:
    delta = {"role": "assistant", "content": None} if content_null else {}
    return orjson.dumps(
        {
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "choices": [{"delta": delta, "index": 0, "finish_reason": "stop"}],
        }
    )


def reasoning_json(text: str) -> bytes:
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


def chunk_json_with_unknown_fields(text: str, n: int) -> bytes:
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


def sse_frame(event: str | None, payload: bytes) -> bytes:
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def error_frame(body: dict[str, Any]) -> bytes:
    return sse_frame("error", orjson.dumps(body))


class SseWriter:
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
            self.raw(sse_frame(name, payload))
        elif name in _UNNAMED_WITHOUT_DETAIL:
            self.raw(sse_frame(None, payload))

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
            self.event("answer", chunk_json(""))
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


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def envelope(data: Any = None) -> web.Response:
    return json_response({"code": 200, "statusText": "", "message": "", "data": data})


def error_body(code: int, status_text: str, message: str) -> dict[str, Any]:
    return {"code": code, "statusText": status_text, "message": message, "data": None}


def known_error(emu: Emulator, code: int, status_text: str, message: str) -> web.Response:
    # Up to 4.8.17 known errors come with HTTP 200; then HTTP 500; from 4.14.11 a 4xx code is the status.
    how = emu.build.error_status
    status = 200 if how == "200" else code if how == "4xx" and 400 <= code < 500 else 500
    return json_response(error_body(code, status_text, message), status)


def generic_error(message: str) -> web.Response:
    return json_response(error_body(500, "", message), 500)


async def until_client_leaves(request: web.Request) -> None:
    """Hang. The handler is normally cancelled when the client goes; polling is the fallback."""
    transport = request.transport
    # No event tells of a closed transport: poll (rarely, the cancellation comes first).
    while transport is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_LEAVE_POLL)
    raise ConnectionResetError("client went away")
