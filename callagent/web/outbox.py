"""A WebSocket's life and its one writer: an outbox drained by a single task.

``serve_socket`` upgrades the request, registers the socket (so shutdown closes it with 1001)
and counts it, runs the protocol's session on it, and unregisters it, whatever happened.

Every socket protocol callagent serves (``/ws``, ``/conversation-relay``) sends through one of
these, so frames leave in the order they were queued. A reply's pump ``send``s: when nothing is
queued and the peer reads, it writes the frame itself (one task switch per event, from the turn
to the pump); everything else goes through the writer task.

Whoever fills the outbox (a handler answering a burst of requests read in one go, a pump
relaying a reply that arrived in many chunks at once) calls ``room()`` between steps: at
``size`` queued frames it waits until the writer has drained half of them, so memory stays
bounded while a peer that reads normally loses nothing. A peer is judged slow by time, not by
a burst: when a frame has waited ``send_timeout`` seconds to be written, the peer is
disconnected, with one ``ws_slow_consumer`` warning. A send is timed only when the transport is
already paused (a send to an unpaused one returns at once); should an untimed send come to wait,
the next ``put`` finds its frame too old and drops the peer (on a quiet socket, the heartbeat
closes it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from .keys import METRICS, SETTINGS, SOCKETS

log = structlog.get_logger(component="callagent.ws")

MAX_FRAME_BYTES = 1024 * 1024
"""Larger frames close the socket (1009); each protocol answers smaller oversize ones itself."""


async def serve_socket(
    request: web.Request, session: Callable[[web.Request, web.WebSocketResponse], Awaitable[None]]
) -> web.WebSocketResponse:
    """Upgrade to a WebSocket and run ``session`` on it, registered for shutdown and counted."""
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(heartbeat=settings.ws_heartbeat, max_msg_size=MAX_FRAME_BYTES)
    await ws.prepare(request)
    sockets, metrics = request.app[SOCKETS], request.app[METRICS]
    sockets.add(ws)
    metrics.open_sockets.inc()
    try:
        await session(request, ws)
    finally:
        metrics.open_sockets.dec()
        sockets.discard(ws)
    return ws


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """A closing socket's tasks (its pumps and writer), all cancelled before anything is awaited:
    the closing handler may itself be cancelled again (the peer hung up) while it waits, and
    nothing of the socket may outlive it."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Outbox:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse, size: int, send_timeout: float) -> None:
        self.request = request
        self.ws = ws
        self.size = size
        self.send_timeout = send_timeout
        self.dropped = False
        self._loop = asyncio.get_running_loop()
        self._frames: deque[tuple[float, dict[str, Any]]] = deque()  # (queued at, frame)
        self._sending_since: float | None = None  # a frame `send` writes itself, while it waits
        self._has_mail = asyncio.Event()
        self._has_room = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: dict[str, Any]) -> None:
        """Queue one frame; a peer that left the oldest frame unwritten too long is dropped."""
        if self.dropped:
            return
        now = self._loop.time()
        oldest = self._frames[0][0] if self._frames else self._sending_since
        if oldest is not None and now - oldest > self.send_timeout:
            self.drop()
            return
        self._frames.append((now, frame))
        self._has_mail.set()

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame from the caller's own task when nothing is queued before it and the
        peer reads (a reply's events so reach the socket with no task switch on the way out);
        otherwise queue it behind the others, making room first."""
        busy = self._frames or self._sending_since is not None or self.request.protocol.writing_paused
        if busy or self.dropped or self.ws.closed:
            self.put(frame)
            await self.room()
            return
        # The frame is written before the send could wait (aiohttp writes, then drains), so
        # frames queued meanwhile still leave after it.
        self._sending_since = self._loop.time()
        try:
            await self.ws.send_str(orjson.dumps(frame).decode())
        except ConnectionResetError:
            pass
        finally:
            self._sending_since = None

    async def room(self) -> None:
        """Wait while the outbox is full, until the writer drained half of it (bounded by the
        send timeout: a peer that does not read in that time is dropped)."""
        if len(self._frames) < self.size or self.dropped:
            return
        self._has_room.clear()
        try:
            async with asyncio.timeout(self.send_timeout):
                await self._has_room.wait()
        except TimeoutError:
            self.drop()

    def drop(self) -> None:
        """Disconnect a peer that does not read what it is sent: once, with one warning."""
        if self.dropped:
            return
        self.dropped = True
        if not self.ws.closed:
            log.warning(
                "ws_slow_consumer", path=self.request.path, queued=len(self._frames), reason="peer is not reading"
            )
        self._frames.clear()
        self._has_room.set()
        if self.request.transport is not None:
            self.request.transport.abort()

    async def run(self) -> None:
        """The writer task: send each queued frame as JSON text, until cancelled."""
        low_water = self.size // 2
        protocol = self.request.protocol
        while True:
            while not self._frames:
                self._has_mail.clear()
                await self._has_mail.wait()
            _, frame = self._frames[0]  # stays queued while it is written: its age judges the peer
            if not self.ws.closed:
                try:
                    if protocol.writing_paused:  # only then can the send wait for the peer
                        async with asyncio.timeout(self.send_timeout):
                            await self.ws.send_str(orjson.dumps(frame).decode())
                    else:
                        await self.ws.send_str(orjson.dumps(frame).decode())
                except TimeoutError:
                    self.drop()
                    return
                except ConnectionResetError:
                    return
            if self._frames:
                self._frames.popleft()
            if len(self._frames) <= low_water:
                self._has_room.set()
