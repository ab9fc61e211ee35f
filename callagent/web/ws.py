"""``GET /ws``: the telephony gateway's socket. One call per socket, or many multiplexed.

Only the handler task reads the socket. Everything sent goes through one outbox
(``outbox.Outbox``): a pump writes a reply's messages itself while the socket keeps up, the
rest is drained by one writer task; the handler and the pumps make ``room()`` between steps,
so memory stays bounded while a gateway that reads normally loses nothing, and a gateway that
leaves a message unwritten for ``ws_send_timeout`` is disconnected. Each turn started on the socket gets a
small pump task that turns its events into messages; the socket owns those tasks and
cancels them, and their turns, when it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar

from aiohttp import WSMsgType, web

from ..errors import CallagentError, InvalidRequest
from ..events import Event, ws_error, ws_message
from ..turns import Turn, TurnRequest
from . import validation as v
from .keys import COMMANDS, SETTINGS
from .outbox import Outbox, cancel_all, serve_socket


async def websocket(request: web.Request) -> web.WebSocketResponse:
    return await serve_socket(request, lambda request, ws: GatewaySocket(request, ws).serve())


class GatewaySocket:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        app = request.app
        self.request = request
        self.ws = ws
        self.settings = app[SETTINGS]
        self.commands = app[COMMANDS]
        self.session_id: str | None = None
        self.segments: dict[str, Any] = {}
        self.outbox = Outbox(request, ws, self.settings.ws_send_queue, self.settings.ws_send_timeout)
        self.seq = 0
        # (session id, turn id) -> pump: turn ids are unique per session, not per socket.
        self.pumps: dict[tuple[str, str], asyncio.Task[None]] = {}

    # -- reading ---------------------------------------------------------------------------

    async def serve(self) -> None:
        writer = asyncio.create_task(self.outbox.run(), name="ws-writer")
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.send_error(InvalidRequest("binary frames are not accepted: send JSON text frames"))
                await self.outbox.room()
        finally:
            await cancel_all([*self.pumps.values(), writer])

    async def handle(self, raw: str) -> None:
        kind = None
        try:
            msg = v.parse_frame(raw, self.settings.max_body_bytes)
            kind = msg.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise InvalidRequest(f"type: must be one of {', '.join(self.handlers)}")
            await handler(self, msg)
        except CallagentError as e:
            self.send_error(e, kind if isinstance(kind, str) else None)

    def session_of(self, msg: dict[str, Any]) -> str:
        if msg.get("sessionId") is not None:
            return v.session_id(msg)
        if self.session_id is None:
            raise InvalidRequest("sessionId: field required (or send `start` first)")
        return self.session_id

    async def known_session(self, msg: dict[str, Any]) -> str:
        return await self.commands.require_session(self.session_of(msg))

    # -- messages --------------------------------------------------------------------------

    async def on_start(self, msg: dict[str, Any]) -> None:
        session_id = v.session_id(msg)
        variables = v.variables(msg)
        segment = v.segment_options(v.optional_str(msg, "segment", 16))
        self.session_id = session_id
        self.segments[session_id] = segment
        if variables:
            await self.commands.set_variables(session_id, variables)
        self.send({"type": "ack", "for": "start", "sessionId": session_id})

    async def on_chat(self, msg: dict[str, Any]) -> None:
        session_id = self.session_of(msg)
        text = v.required_str(msg, "text", self.settings.max_text_chars)
        turn_id = v.turn_id(msg)
        if turn_id is not None and (session_id, turn_id) in self.pumps:
            raise InvalidRequest(f"turnId: {turn_id} is already running")
        turn = self.commands.start_turn(
            TurnRequest(session_id, text, transport="ws", turn_id=turn_id, segment=self.segments.get(session_id))
        )
        self.pumps[session_id, turn.id] = asyncio.create_task(self.pump(turn), name=f"ws-pump-{turn.id}")

    async def pump(self, turn: Turn) -> None:
        try:
            await turn.deliver(partial(self.send_event, turn.id))
        finally:
            if not turn.ended:  # the socket closed mid-turn
                turn.cancel()
                await asyncio.shield(turn.wait())
            self.pumps.pop((turn.session_id, turn.id), None)

    async def on_interrupt(self, msg: dict[str, Any]) -> None:
        session_id = self.session_of(msg)
        turn_id = v.optional_str(msg, "turnId", 128)
        spoken = v.optional_str(msg, "spokenText", self.settings.max_text_chars)
        interruption = await self.commands.interrupt(session_id, spoken, turn_id)
        turn = interruption.turn
        pump = self.pumps.get((turn.session_id, turn.id)) if turn is not None else None
        if pump is not None:
            await asyncio.shield(pump)  # the turn's `done` is on its way out before the ack
        self.send(
            {
                "type": "ack",
                "for": "interrupt",
                "sessionId": session_id,
                "turnId": interruption.turn_id,
                "cancelled": interruption.cancelled,
            }
        )

    async def on_set_info(self, msg: dict[str, Any]) -> None:
        session_id = self.session_of(msg)
        key, value = v.variable_key(msg), v.variable_value(msg)
        await self.commands.set_variables(session_id, {key: value})
        self.send({"type": "ack", "for": "set_info", "sessionId": session_id, "key": key})

    async def on_get_info(self, msg: dict[str, Any]) -> None:
        session_id = await self.known_session(msg)
        variables = await self.commands.get_variables(session_id)
        key = v.optional_str(msg, "key", v.MAX_KEY_CHARS)
        if key is not None:
            self.send({"type": "info", "sessionId": session_id, "key": key, "value": variables.get(key)})
        else:
            self.send({"type": "info", "sessionId": session_id, "info": variables})

    async def on_delete_last_turn(self, msg: dict[str, Any]) -> None:
        session_id = await self.known_session(msg)
        deleted = await self.commands.delete_last_turn(session_id)
        self.send({"type": "ack", "for": "delete_last_turn", "sessionId": session_id, "turnId": deleted})

    async def on_ping(self, msg: dict[str, Any]) -> None:
        self.send({"type": "pong", "t": msg.get("t")})

    # The message types, as plain functions: a per-socket dict of bound methods would be a
    # reference cycle left to the garbage collector by every socket.
    handlers: ClassVar[dict[str, Callable[[GatewaySocket, dict[str, Any]], Awaitable[None]]]] = {
        "start": on_start,
        "chat": on_chat,
        "interrupt": on_interrupt,
        "set_info": on_set_info,
        "get_info": on_get_info,
        "delete_last_turn": on_delete_last_turn,
        "ping": on_ping,
    }

    # -- writing ---------------------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        self.seq += 1
        msg["seq"] = self.seq
        self.outbox.put(msg)

    async def send_event(self, turn_id: str, event: Event) -> None:
        """One of a turn's events, written at once while the socket keeps up (``Outbox.send``)."""
        message = ws_message(event, turn_id, 0)
        self.seq += 1
        message["seq"] = self.seq
        await self.outbox.send(message)

    def send_error(self, error: CallagentError, reply_to: str | None = None) -> None:
        self.send(ws_error(error, reply_to))
