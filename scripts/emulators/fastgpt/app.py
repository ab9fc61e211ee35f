"""The emulator's aiohttp application: settings, routes, and a middleware recording every request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from .brains import DEFAULT_REPLY, Brain, ScriptedBrain
from .builds import DEFAULT_BUILD
from .completions import completions, stop_chat
from .control import (
    control_build,
    control_chats,
    control_clear_requests,
    control_fault,
    control_requests,
    control_reset,
    control_streams,
)
from .records import (
    clear_histories,
    del_history,
    delete_records,
    get_histories,
    get_pagination_records,
    get_res_data,
    init_chat,
    update_history,
)
from .state import EMULATOR, REQUEST_BODY, Emulator, RecordedRequest


def create_emulator_app(
    brain: Brain | None = None,
    *,
    api_key: str = "fastgpt-test",
    app_id: str = "app1",
    chunk_chars: int = 4,
    chunk_delay: float = 0.0,
    first_chunk_delay: float = 0.0,
    heartbeat_interval: float = 10.0,
    build: str = DEFAULT_BUILD,
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
        build=build,
        fault=fault,
    )
    _add_routes(app.router)
    app.on_cleanup.append(_stop_finishing_runs)
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
    # FastGPT's delete handlers do not check the HTTP method.
    router.add_route("*", f"{chat}/item/delete", delete_records)
    router.add_route("*", f"{chat}/record/delete", delete_records)
    router.add_get("/__emulator/requests", control_requests)
    router.add_delete("/__emulator/requests", control_clear_requests)
    router.add_get("/__emulator/chats", control_chats)
    router.add_get("/__emulator/streams", control_streams)
    router.add_post("/__emulator/fault", control_fault)
    router.add_post("/__emulator/reset", control_reset)
    router.add_get("/__emulator/build", control_build)
    router.add_post("/__emulator/build", control_build)


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
    emu = request.app[EMULATOR]
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
    if not emu.build.has_path(request.path):
        # What FastGPT's web framework answers for an API this release does not have.
        return web.Response(
            status=404, text="<!DOCTYPE html><title>404: This page could not be found</title>", content_type="text/html"
        )
    return await handler(request)


async def _stop_finishing_runs(app: web.Application) -> None:
    tasks = list(app[EMULATOR].tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""
