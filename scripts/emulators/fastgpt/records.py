"""Chat history and record endpoints (``/api/core/chat/...``), legacy and newer paths.

They need the app's key and an explicit ``appId``, and answer in FastGPT's envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .state import EMULATOR, REQUEST_BODY, Emulator, authorized, now_iso
from .wire import envelope, known_error


def request_json(request: web.Request) -> dict[str, Any]:
    body = request[REQUEST_BODY]
    return body if isinstance(body, dict) else {}


def guard(request: web.Request, emu: Emulator, app_id: Any) -> web.Response | None:
    """The CRUD endpoints need the key and an explicit appId of the key's app."""
    if not authorized(request, emu):
        return known_error(emu, 514, "unAuthApiKey", "Api Key 不合法")
    if not app_id:
        return known_error(emu, 403, "unAuthorization", "appId is required with an API key")
    if app_id != emu.app_id:
        return known_error(emu, 403, "unAuthorization", "this API key cannot access that app")
    return None


def as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


async def get_histories(request: web.Request) -> web.Response:
    emu, body = request.app[EMULATOR], request_json(request)
    if (refused := guard(request, emu, body.get("appId"))) is not None:
        return refused
    chats = sorted(
        (c for c in emu.chats.values() if c.app_id == emu.app_id and c.records),
        key=lambda c: (c.top, c.update_time),
        reverse=True,
    )
    offset, size = max(0, as_int(body.get("offset"), 0)), max(0, as_int(body.get("pageSize"), 20))
    page = [
        {
            "chatId": c.chat_id,
            "updateTime": c.update_time,
            "appId": c.app_id,
            "customTitle": c.custom_title,
            "title": c.title,
            "top": c.top,
        }
        for c in chats[offset : offset + size]
    ]
    return envelope({"list": page, "total": len(chats)})


async def update_history(request: web.Request) -> web.Response:
    emu, body = request.app[EMULATOR], request_json(request)
    if (refused := guard(request, emu, body.get("appId"))) is not None:
        return refused
    chat = emu.chat(str(body.get("chatId") or ""))
    if chat is not None:
        for key, attr in (("title", "title"), ("customTitle", "custom_title"), ("top", "top")):
            if key in body:
                setattr(chat, attr, body[key])
        chat.update_time = now_iso()
    return envelope()


async def del_history(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := guard(request, emu, query.get("appId"))) is not None:
        return refused
    emu.chats.pop((emu.app_id, query.get("chatId", "")), None)
    return envelope()


async def clear_histories(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := guard(request, emu, query.get("appId"))) is not None:
        return refused
    for key in [k for k in emu.chats if k[0] == emu.app_id]:
        del emu.chats[key]
    return envelope()


async def init_chat(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := guard(request, emu, query.get("appId"))) is not None:
        return refused
    chat_id = query.get("chatId", "")
    chat = emu.chat(chat_id)
    return envelope(
        {
            "chatId": chat_id,
            "appId": emu.app_id,
            "title": chat.title if chat else "",
            "userAvatar": "",
            "variables": dict(chat.variables) if chat else {},
            "app": {
                "name": "事故信息采集",
                "avatar": "",
                "intro": "",
                "type": "advanced",
                "chatConfig": {},
                "pluginInputs": [],
            },
        }
    )


async def get_pagination_records(request: web.Request) -> web.Response:
    emu, body = request.app[EMULATOR], request_json(request)
    if (refused := guard(request, emu, body.get("appId"))) is not None:
        return refused
    chat = emu.chat(str(body.get("chatId") or ""))
    records = chat.records if chat else []
    # `offset` counts back from the newest record; the page itself is chronological.
    end = max(0, len(records) - max(0, as_int(body.get("offset"), 0)))
    start = max(0, end - max(0, as_int(body.get("pageSize"), 10)))
    return envelope({"list": records[start:end], "total": len(records)})


async def get_res_data(request: web.Request) -> web.Response:
    emu, query = request.app[EMULATOR], request.query
    if (refused := guard(request, emu, query.get("appId"))) is not None:
        return refused
    chat = emu.chat(query.get("chatId", ""))
    return envelope(chat.node_responses.get(query.get("dataId", ""), []) if chat else [])


async def delete_records(request: web.Request) -> web.Response:
    """``item/delete`` and ``record/delete``: where the ids are read from depends on the release.

    Up to 4.13 ``item/delete`` reads the query; 4.14.0-4.14.10 the JSON body only (a query-only
    call fails); from 4.14.11 it is gone and ``record/delete`` reads the query, and on 4.15 the
    query or the body (``contentId`` or ``contentIds``).
    """
    emu, build = request.app[EMULATOR], request.app[EMULATOR].build
    reads = build.item_delete if request.path.endswith("/item/delete") else build.record_delete
    sources: list[Mapping[str, Any]] = []
    if reads in ("query", "any"):
        sources.append(request.query)
    if reads in ("body", "any"):
        sources.append(request_json(request))
    if not authorized(request, emu):
        return known_error(emu, 514, "unAuthApiKey", "Api Key 不合法")
    ids = {str(s["contentId"]) for s in sources if s.get("contentId")}
    body = request_json(request)
    if reads == "any" and isinstance(body.get("contentIds"), list):
        ids.update(str(i) for i in body["contentIds"])
    chat_id = next((str(s["chatId"]) for s in sources if s.get("chatId")), "")
    if not ids or not chat_id:
        return known_error(emu, 500, "", "contentId or chatId is empty")
    app_id = next((s["appId"] for s in sources if s.get("appId")), None)
    if (refused := guard(request, emu, app_id)) is not None:
        return refused
    chat = emu.chat(chat_id)
    if chat is not None:
        chat.records = [r for r in chat.records if r["dataId"] not in ids]
    return envelope()
