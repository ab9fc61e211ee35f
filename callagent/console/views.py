"""The console's routes: the page, its live feed, a call's data, the operator's actions.

::

    GET  /console                                the page (static files under /console/static/)
    GET  /console/api/feed                       SSE: the call feed (see ``feed``)
    GET  /console/api/sessions/{sessionId}       transcript + variables of one call
    POST /console/api/sessions/{sessionId}/interrupt | end | undo | variables
    GET  /console/api/overview                   this instance's metrics, for the overview charts
    GET  /console/api/ws                         the WebSocket API, for the page's test softphone

Every ``/console/api/`` request carries a console key (``Authorization: Bearer``, or
``?token=`` where a browser cannot set headers); the middleware in ``web.middlewares``
checks it and names the operator. Actions go through the session-command layer like a
gateway's requests, and each is logged with the operator's name and shown to every viewer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from ..events import dumps
from ..metrics import Metrics
from ..web import validation as v
from ..web import ws
from ..web.keys import COMMANDS, ENGINE, METRICS, SETTINGS, STAGES
from ..web.transcript import session_turns
from .access import OPERATOR
from .feed import CallFeed

log = structlog.get_logger(component="callagent.console")

MAX_FRAMES_PER_WRITE = 256
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
STATIC = Path(__file__).resolve().parent / "static"
FEED = web.AppKey("console_feed", CallFeed)

routes = web.RouteTableDef()


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
    app.router.add_static("/console/static", STATIC, append_version=False)


@routes.get("/console")
async def page(request: web.Request) -> web.FileResponse:
    # The page runs only its own files: no inline script, nothing from elsewhere.
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
    return web.FileResponse(STATIC / "index.html", headers=headers)


@routes.get("/console/api/feed")
async def feed(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    call_feed = request.app[FEED]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    viewer = call_feed.join(request[OPERATOR])
    viewer.task = asyncio.current_task()
    try:
        while not viewer.dropped:
            try:
                async with asyncio.timeout(settings.sse_ping_interval):
                    frames = [await viewer.queue.get()]
            except TimeoutError:
                frames = [b": ping\n\n"]
            # Everything queued meanwhile leaves in the same write: under load, one write
            # carries many events instead of one system call each.
            while not viewer.queue.empty() and len(frames) < MAX_FRAMES_PER_WRITE:
                frames.append(viewer.queue.get_nowait())
            async with asyncio.timeout(settings.sse_send_timeout):
                await response.write(b"".join(frames))
    except (ConnectionResetError, RuntimeError):
        pass  # the page went away
    except TimeoutError:
        viewer.dropped = True  # it stopped reading
    finally:
        call_feed.leave(viewer)
    if viewer.dropped and request.transport is not None:
        request.transport.abort()
    return response


def session_of(request: web.Request) -> str:
    return v.session_id({"sessionId": request.match_info["session_id"]})


@routes.get("/console/api/sessions/{session_id}")
async def session(request: web.Request) -> web.Response:
    commands = request.app[COMMANDS]
    session_id = await commands.require_session(session_of(request))
    body = {
        "sessionId": session_id,
        "turns": await session_turns(request, session_id),
        "variables": await commands.get_variables(session_id),
    }
    return web.json_response(body, dumps=dumps)


async def acted(request: web.Request, session_id: str, action: str, **detail: Any) -> web.Response:
    """Log who did what (a variable's value stays out of the log: it may be the caller's data),
    tell every viewer, answer."""
    who = request[OPERATOR]
    logged = {k: v for k, v in detail.items() if k != "value"}
    log.info("console_action", who=who, action=action, session_id=session_id, **logged)
    request.app[FEED].action(session_id, action, who, **detail)
    return web.json_response({"sessionId": session_id, "action": action, "who": who, **detail}, dumps=dumps)


@routes.post("/console/api/sessions/{session_id}/interrupt")
async def interrupt(request: web.Request) -> web.Response:
    session_id = await request.app[COMMANDS].require_session(session_of(request))
    interruption = await request.app[COMMANDS].interrupt(session_id)
    return await acted(request, session_id, "interrupt", turnId=interruption.turn_id, cancelled=interruption.cancelled)


@routes.post("/console/api/sessions/{session_id}/end")
async def end(request: web.Request) -> web.Response:
    session_id = await request.app[COMMANDS].require_session(session_of(request))
    await request.app[COMMANDS].delete_session(session_id)
    return await acted(request, session_id, "end")


@routes.post("/console/api/sessions/{session_id}/undo")
async def undo(request: web.Request) -> web.Response:
    session_id = await request.app[COMMANDS].require_session(session_of(request))
    deleted = await request.app[COMMANDS].delete_last_turn(session_id)
    return await acted(request, session_id, "undo", turnId=deleted)


@routes.post("/console/api/sessions/{session_id}/variables")
async def set_variable(request: web.Request) -> web.Response:
    session_id = await request.app[COMMANDS].require_session(session_of(request))
    data = await v.json_body(request, request.app[SETTINGS].request_read_timeout)
    key, value = v.variable_key(data), v.variable_value(data)
    await request.app[COMMANDS].set_variables(session_id, {key: value})
    return await acted(request, session_id, "set_variable", key=key, value=value)


@routes.get("/console/api/overview")
async def overview(request: web.Request) -> web.Response:
    return web.json_response(metrics_snapshot(request.app[METRICS]), dumps=dumps)


@routes.get("/console/api/ws")
async def softphone(request: web.Request) -> web.WebSocketResponse:
    return await ws.websocket(request)


def metrics_snapshot(metrics: Metrics) -> dict[str, Any]:
    """The counters the overview charts difference over time (cumulative, as Prometheus keeps them)."""
    out: dict[str, Any] = {"at": time.time(), "turns": {}, "stages": {}, "errors": {}, "firstText": [], "running": 0}
    for family in metrics.registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "callagent_turns_total":
                out["turns"][labels["status"]] = out["turns"].get(labels["status"], 0) + value
            elif name == "callagent_stage_codes_total":
                out["stages"][labels["code"]] = value
            elif name == "callagent_turn_errors_total":
                out["errors"][labels["type"]] = value
            elif name == "callagent_first_text_seconds_bucket":
                out["firstText"].append([float(labels["le"]), value])
            elif name == "callagent_running_turns":
                out["running"] = value
    return out


async def feed_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the call feed, hooked to the engine by its viewers (after ``engine_ctx``)."""
    settings = app[SETTINGS]
    redis_url = settings.store if settings.store.startswith(("redis://", "rediss://")) else None
    call_feed = CallFeed(
        app[ENGINE], app[STAGES], app[METRICS], redis_url=redis_url, buffer=settings.console_viewer_buffer
    )
    app[FEED] = call_feed
    await call_feed.open()
    yield
    await call_feed.close()


async def disconnect_viewers(app: web.Application) -> None:
    """``on_shutdown``: console streams never end by themselves."""
    if FEED in app:
        app[FEED].disconnect_all()
