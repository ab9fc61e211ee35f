"""The original HTTP API: decode the request, make one call on the session-command layer, encode.

``POST /chat`` serves both the folded JSON reply and the SSE stream; everything else is a
session operation or an operational endpoint.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog
from aiohttp import web

from ..events import FoldedReply, dumps, sse_frame
from ..turns import Turn, TurnRequest
from . import validation as v
from .keys import COMMANDS, METRICS, SETTINGS, STORE, UPSTREAM

routes = web.RouteTableDef()
log = structlog.get_logger(component="callagent.web")


def ok(data: dict[str, Any], **extra: Any) -> web.Response:
    body = {"code": "200", "msg": "success", "sessionId": data["sessionId"], "timeStamp": v.time_stamp(data)}
    body.update(extra)
    return web.json_response(body, dumps=dumps)


async def request_data(request: web.Request) -> dict[str, Any]:
    """The JSON body; for GET (and a DELETE without a body) the query string. The fields every
    reply echoes are checked here, before the handler acts: nothing fails after a side effect."""
    if request.method == "GET" or (not request.body_exists and request.query):
        data = dict(request.query)
    else:
        data = await v.json_body(request, request.app[SETTINGS].request_read_timeout)
    v.time_stamp(data)
    return data


async def known_session(request: web.Request, data: dict[str, Any]) -> str:
    return await request.app[COMMANDS].require_session(v.session_id(data))


# -- turns ----------------------------------------------------------------------------------


@routes.post("/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    data = await request_data(request)
    settings = request.app[SETTINGS]
    stream = request.query.get("stream", "").lower() in ("1", "true", "yes") or v.flag(data, "stream")
    turn_request = TurnRequest(
        session_id=v.session_id(data),
        text=v.required_str(data, "text", settings.max_text_chars),
        time_stamp=v.time_stamp(data),
        transport="sse" if stream else "http",
        segment=v.segment_options(request.query.get("segment")) if stream else None,
    )
    if stream:
        return await _chat_sse(request, turn_request)
    return await _chat_json(request, data, turn_request)


async def _chat_json(request: web.Request, data: dict[str, Any], turn_request: TurnRequest) -> web.Response:
    reply = FoldedReply()
    async with request.app[COMMANDS].turn(turn_request) as turn:
        async for event in turn.events():
            reply.add(event)
    if reply.error is not None and not request.app[SETTINGS].fallback_enabled:
        raise reply.error.error
    extra: dict[str, Any] = {
        "turnId": turn.id,
        "nextStageCode": reply.stage.code if reply.stage else "",
        "nextStage": reply.stage.name if reply.stage else "",
        "text": "".join(reply.text),
    }
    if reply.done is not None:
        extra["status"] = reply.done.status
        extra["latency"] = reply.done.latency
        if not reply.done.saved:
            extra["transcriptSaved"] = False
    if reply.error is not None:
        extra["status"] = "failed"
        extra["error"] = reply.error.fields()
    return ok(data, **extra)


SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"  # a comment line: readers skip it


async def _chat_sse(request: web.Request, turn_request: TurnRequest) -> web.StreamResponse:
    app = request.app
    metrics = app[METRICS]
    settings = app[SETTINGS]
    send_timeout = settings.sse_send_timeout
    async with app[COMMANDS].turn(turn_request) as turn:
        sse = web.StreamResponse(headers=SSE_HEADERS)  # chunked: HTTP/1.1 and no length
        await sse.prepare(request)
        metrics.open_streams.inc()
        drop_half_open(request, send_timeout)
        keeper = StreamKeeper(request, sse, turn, send_timeout, settings.sse_ping_interval)
        keep = asyncio.create_task(keeper.run(), name=f"sse-keep-{turn.id}")
        protocol = request.protocol
        try:
            seq = 0
            async for event in turn.events():
                seq += 1
                frame = sse_frame(event, turn.id, seq)
                if protocol.writing_paused:  # only then can the write wait for the gateway
                    async with asyncio.timeout(send_timeout):
                        await sse.write(frame)
                else:
                    await sse.write(frame)
        except (ConnectionResetError, RuntimeError):
            pass  # the gateway went away; leaving the block cancels the turn
        except TimeoutError:
            keeper.drop()
        finally:
            keep.cancel()
            await asyncio.gather(keep, return_exceptions=True)
            metrics.open_streams.dec()
    return sse


class StreamKeeper:
    """An SSE response's one timer task: a ping every ``ping_interval`` (proxies keep the stream
    open), and the gateway judged by time: one that leaves what it is sent unread for
    ``send_timeout`` seconds (a write waits that long, or bytes wait that long in the
    connection's buffer while the turn is quiet) is dropped, with one ``sse_slow_consumer`` warning.

    A write is timed only when the transport is already paused: a write to an unpaused one
    returns at once (aiohttp waits only when its buffer is past 64 KiB and the transport paused).
    A gateway that stops reading while an untimed write waits is caught by the look at the
    connection's buffer."""

    def __init__(
        self, request: web.Request, response: web.StreamResponse, turn: Turn, send_timeout: float, ping_interval: float
    ) -> None:
        self.request = request
        self.response = response
        self.turn = turn
        self.send_timeout = send_timeout
        self.ping_interval = ping_interval
        self.dropped = False

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        log.warning(
            "sse_slow_consumer", session_id=self.turn.session_id, turn_id=self.turn.id, reason="gateway is not reading"
        )
        if self.request.transport is not None:
            self.request.transport.abort()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        look_every = self.send_timeout / 4  # a periodic look, not a wait for something
        next_look, next_ping = loop.time() + look_every, loop.time() + self.ping_interval
        unread_since: float | None = None
        while not self.dropped:
            await asyncio.sleep(min(next_look, next_ping) - loop.time())
            transport = self.request.transport
            if transport is None or transport.is_closing():
                return
            now = loop.time()
            if now >= next_look:
                next_look = now + look_every
                if transport.get_write_buffer_size() == 0:  # the kernel took everything: it is read
                    unread_since = None
                elif unread_since is None:
                    unread_since = now
                elif now - unread_since >= self.send_timeout:
                    self.drop()
            if now >= next_ping and not self.dropped:
                next_ping = now + self.ping_interval
                try:
                    async with asyncio.timeout(self.send_timeout):
                        await self.response.write(PING)
                except TimeoutError:
                    self.drop()
                except (ConnectionResetError, RuntimeError):
                    return  # the gateway went away, or the stream has ended


def drop_half_open(request: web.Request, send_timeout: float) -> None:
    """Ask the kernel to drop the connection when sent bytes stay unacknowledged a little longer
    than ``send_timeout`` (Linux): a half-open gateway is noticed even when nothing is being
    written. A gateway that merely stops reading is caught by the write timeout first, and logged."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, int((send_timeout + 1) * 1000))


@routes.post("/cancel")
async def cancel(request: web.Request) -> web.Response:
    data = await request_data(request)
    session_id = await known_session(request, data)
    spoken = v.optional_str(data, "spokenText", request.app[SETTINGS].max_text_chars)
    interruption = await request.app[COMMANDS].interrupt(session_id, spoken)
    return ok(data, cancelled=interruption.cancelled)


# -- session operations ---------------------------------------------------------------------


@routes.post("/set_info")
async def set_info(request: web.Request) -> web.Response:
    data = await request_data(request)
    session_id = v.session_id(data)
    await request.app[COMMANDS].set_variables(session_id, {v.variable_key(data): v.variable_value(data)})
    return ok(data)


@routes.post("/get_info")
@routes.get("/get_info")
async def get_info(request: web.Request) -> web.Response:
    data = await request_data(request)
    session_id = await known_session(request, data)
    variables = await request.app[COMMANDS].get_variables(session_id)
    key = v.optional_str(data, "key", v.MAX_KEY_CHARS)
    if key is not None:
        return ok(data, key=key, value=variables.get(key))
    return ok(data, info=variables)


@routes.post("/delete_last_turn")
async def delete_last_turn(request: web.Request) -> web.Response:
    data = await request_data(request)
    session_id = await known_session(request, data)
    deleted = await request.app[COMMANDS].delete_last_turn(session_id)
    return ok(data, turnId=deleted)


@routes.delete("/delete_session")
@routes.post("/delete_session")
async def delete_session(request: web.Request) -> web.Response:
    data = await request_data(request)
    session_id = await known_session(request, data)
    upstream_error = await request.app[COMMANDS].delete_session(session_id)
    if upstream_error is None:
        return ok(data, upstreamDeleted=True)
    return ok(data, upstreamDeleted=False, upstreamError=upstream_error.body())


# -- operations -----------------------------------------------------------------------------


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, dumps=dumps)


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    await request.app[STORE].ping()
    await request.app[UPSTREAM].check_ready()
    return web.json_response({"status": "ready"}, dumps=dumps)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
