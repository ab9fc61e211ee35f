"""Control endpoints under ``/__emulator/`` for out-of-process users (benchmarks, multi-process tests).

``GET requests|chats|streams``, ``POST fault {"mode": ..., "count": n}``, ``POST reset`` and
``DELETE requests``.
"""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from .records import request_json
from .state import EMULATOR
from .wire import json_response


async def control_requests(request: web.Request) -> web.Response:
    return json_response([asdict(r) for r in request.app[EMULATOR].requests])


async def control_clear_requests(request: web.Request) -> web.Response:
    request.app[EMULATOR].requests.clear()
    return json_response({"ok": True})


async def control_chats(request: web.Request) -> web.Response:
    chats = request.app[EMULATOR].chats.values()
    return json_response(
        [{"appId": c.app_id, "chatId": c.chat_id, "variables": c.variables, "records": c.records} for c in chats]
    )


async def control_streams(request: web.Request) -> web.Response:
    return json_response([log.summary() for log in request.app[EMULATOR].streams])


async def control_fault(request: web.Request) -> web.Response:
    body = request_json(request)
    count = body.get("count")
    try:
        request.app[EMULATOR].set_fault(body.get("mode"), None if count is None else int(count))
    except (TypeError, ValueError) as e:
        return json_response({"ok": False, "error": str(e)}, 400)
    return json_response({"ok": True})


async def control_reset(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    emu.reset()
    emu.set_fault(None)
    return json_response({"ok": True})


async def control_build(request: web.Request) -> web.Response:
    """``GET``: the FastGPT release being emulated; ``POST {"build": "4.14.5"}``: become another."""
    emu = request.app[EMULATOR]
    if request.method == "POST":
        try:
            emu.set_build(str(request_json(request).get("build")))
        except ValueError as e:
            return json_response({"ok": False, "error": str(e)}, 400)
    return json_response({"ok": True, "build": emu.build.name})
