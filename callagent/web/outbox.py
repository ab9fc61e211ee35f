"""A WebSocket's one writer: a bounded outbox drained by a single task.

Every socket protocol callagent serves (``/ws``, ``/conversation-relay``) sends through one of
these, so frames leave in the order they were queued and nothing but the writer task ever
writes to the socket. A peer that stops reading fills the outbox; instead of growing our
memory it is disconnected, with a logged reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from aiohttp import web

log = structlog.get_logger("callagent.ws")


class Outbox:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse, size: int) -> None:
        self.request = request
        self.ws = ws
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def put(self, msg: dict[str, Any]) -> None:
        """Queue one frame; a full outbox means the peer is not reading: drop the connection."""
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            if not self.ws.closed:
                log.warning(
                    "ws_slow_consumer", path=self.request.path, queued=self._queue.qsize(), reason="peer is not reading"
                )
                if self.request.transport is not None:
                    self.request.transport.abort()

    async def run(self) -> None:
        """The writer task: send each queued frame as JSON text, until cancelled."""
        while True:
            msg = await self._queue.get()
            if self.ws.closed:
                continue
            try:
                await self.ws.send_str(orjson.dumps(msg).decode())
            except ConnectionResetError:
                return
