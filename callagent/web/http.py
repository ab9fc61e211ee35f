"""The original HTTP API: decode the request, make one call on the session-command layer, encode.

``POST /chat`` serves both the folded JSON reply and the SSE stream; everything else is a
session operation or an operational endpoint.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from ..events import Event, FoldedReply, SSEFrames, dumps
from ..turns import TurnRequest
from . import validation as v
from .keys import COMMANDS, METRICS, SETTINGS, STORE, UPSTREAM
from .stream import EventStream

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


async def _chat_sse(request: web.Request, turn_request: TurnRequest) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    async with request.app[COMMANDS].turn(turn_request) as turn:
        stream = EventStream(
            request,
            ping_interval=settings.sse_ping_interval,
            send_timeout=settings.sse_send_timeout,
            slow_event="sse_slow_consumer",
            session_id=turn.session_id,
            turn_id=turn.id,
        )
        await stream.open()
        try:
            await turn.deliver(SSEWriter(stream, SSEFrames(turn.id)).write)
        except (ConnectionResetError, RuntimeError):
            pass  # the gateway went away; leaving the block cancels the turn
        except TimeoutError:
            stream.drop()
        finally:
            await stream.close()
    return stream.response


class SSEWriter:
    """A turn's events as numbered SSE frames on its stream (written by whichever task holds
    the event: see ``Turn.deliver``)."""

    __slots__ = ("frames", "seq", "stream")

    def __init__(self, stream: EventStream, frames: SSEFrames) -> None:
        self.stream, self.frames, self.seq = stream, frames, 0

    async def write(self, event: Event) -> None:
        self.seq += 1
        await self.stream.write(self.frames.frame(event, self.seq))


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
