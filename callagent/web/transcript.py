"""``GET /transcript``: a session's turns as JSON, for integrators and the operator console.

A turn is shown as the gateway saw it: the caller's text, the reply generated, what the
caller heard of it when they barged in, the stage codes, how it ended and its timings. The
upstream's record ids and the variables a turn overwrote stay inside.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..events import dumps
from ..store import TurnRecord
from . import validation as v
from .keys import COMMANDS, STORE


def turn_json(record: TurnRecord) -> dict[str, Any]:
    return {
        "turnId": record.turn_id,
        "callerText": record.caller_text,
        "replyText": record.reply_text,
        "spokenText": record.spoken_text,
        "stageCodes": record.stage_codes,
        "status": record.status,
        "errorType": record.error_type,
        "transport": record.transport,
        "timeStamp": record.time_stamp,
        "receivedAt": record.received_at,
        "timings": record.timings,
        "deleted": record.deleted,
    }


async def session_turns(request: web.Request, session_id: str) -> list[dict[str, Any]]:
    return [turn_json(r) for r in await request.app[STORE].turns(session_id)]


async def transcript(request: web.Request) -> web.Response:
    data = dict(request.query)
    session_id = await request.app[COMMANDS].require_session(v.session_id(data))
    body = {
        "code": "200",
        "msg": "success",
        "sessionId": session_id,
        "timeStamp": v.time_stamp(data),
        "turns": await session_turns(request, session_id),
    }
    return web.json_response(body, dumps=dumps)
