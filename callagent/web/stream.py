"""A streamed ``text/event-stream`` response, for every route that streams SSE to a gateway.

``/chat?stream=true`` and the OpenAI-compatible route write their own frames through an
``EventStream``; it owns what the two have in common: the headers, the socket option that
notices a half-open gateway, and one timer per stream (a loop timer, not a task: most replies
end before it is due) that sends the keep-alive ``: ping`` and judges the gateway by time. A
gateway that leaves what it is sent unread for ``send_timeout`` seconds (a write waits that
long, or bytes wait that long in the connection's buffer while the stream is quiet) is
dropped, with one ``slow_event`` warning.

A write is timed only when the transport is already paused: a write to an unpaused one returns
at once (aiohttp waits only when its buffer is past 64 KiB and the transport paused). A gateway
that stops reading while an untimed write waits is caught by the look at the buffer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog
from aiohttp import web

from .keys import METRICS

log = structlog.get_logger(component="callagent.web")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"  # a comment line: readers skip it


class EventStream:
    def __init__(
        self,
        request: web.Request,
        *,
        ping_interval: float,
        send_timeout: float,
        slow_event: str,
        **log_fields: Any,
    ) -> None:
        self.request = request
        self.response = web.StreamResponse(headers=SSE_HEADERS)  # chunked: HTTP/1.1 and no length
        self.ping_interval = ping_interval
        self.send_timeout = send_timeout
        self.slow_event = slow_event
        self.log_fields = log_fields
        self.dropped = False
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None
        self._next_look = self._next_ping = 0.0
        self._unread_since: float | None = None
        self._open = False

    async def open(self) -> None:
        await self.response.prepare(self.request)
        self._open = True
        self.request.app[METRICS].open_streams.inc()
        drop_half_open(self.request, self.send_timeout)
        now = self._loop.time()
        self._next_look = now + self.send_timeout / 4  # a periodic look, not a wait for something
        self._next_ping = now + self.ping_interval
        self._timer = self._loop.call_at(min(self._next_look, self._next_ping), self._tick)

    async def write(self, data: bytes) -> None:
        """One whole frame; ``TimeoutError`` when a paused gateway does not read it in time."""
        if self.request.protocol.writing_paused:  # only then can the write wait for the gateway
            async with asyncio.timeout(self.send_timeout):
                await self.response.write(data)
        else:
            await self.response.write(data)

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        log.warning(self.slow_event, reason="gateway is not reading", **self.log_fields)
        if self.request.transport is not None:
            self.request.transport.abort()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pinging is not None:
            self._pinging.cancel()
            await asyncio.gather(self._pinging, return_exceptions=True)
            self._pinging = None
        if self._open:
            self._open = False
            self.request.app[METRICS].open_streams.dec()

    def _tick(self) -> None:
        """The stream's one timer (no task: most replies end before it is due): a look at the
        connection's buffer, and the keep-alive ping, written by a short task when it is due."""
        self._timer = None
        transport = self.request.transport
        if self.dropped or transport is None or transport.is_closing():
            return
        now = self._loop.time()
        if now >= self._next_look:
            self._next_look = now + self.send_timeout / 4
            if transport.get_write_buffer_size() == 0:  # the kernel took everything: it is read
                self._unread_since = None
            elif self._unread_since is None:
                self._unread_since = now
            elif now - self._unread_since >= self.send_timeout:
                self.drop()
                return
        if now >= self._next_ping:
            self._next_ping = now + self.ping_interval
            if self._pinging is None or self._pinging.done():
                self._pinging = asyncio.create_task(self._ping(), name="sse-ping")
        self._timer = self._loop.call_at(min(self._next_look, self._next_ping), self._tick)

    async def _ping(self) -> None:
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.response.write(PING)
        except TimeoutError:
            self.drop()
        except (ConnectionResetError, RuntimeError):
            pass  # the gateway went away, or the stream has ended


def drop_half_open(request: web.Request, send_timeout: float) -> None:
    """Ask the kernel to drop the connection when sent bytes stay unacknowledged a little longer
    than ``send_timeout`` (Linux): a half-open gateway is noticed even when nothing is being
    written. A gateway that merely stops reading is caught by the write timeout first, and logged."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, int((send_timeout + 1) * 1000))
