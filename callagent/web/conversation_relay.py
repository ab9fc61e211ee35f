"""``GET /conversation-relay``: Twilio ConversationRelay (and Telnyx, which speaks the same frames).

The platform does speech recognition and synthesis; this socket exchanges text with it. It is
a codec over the session-command layer, built like ``/ws`` (only the handler task reads; one
writer drains a bounded outbox; one pump task per turn; the socket's close cancels them all)::

    platform -> callagent                      callagent -> platform
    setup      session = customParameters.sessionId or callSid; customParameters -> variables
    prompt     voicePrompt, last: true -> a turn (a running one is cut off)
                                              text {token, last: false}  per reply piece
                                              text {token: "", last: true}  the reply is complete
                                              end {handoffData}  after that, for a hang-up or
                                                                 transfer stage (twilio.py)
    interrupt  utteranceUntilInterrupt = what the caller heard: the turn stops, the transcript
               records it                     text {token: "", last: true}  (the acknowledgement)
    dtmf, info logged                         error  logged (the platform refused one of ours)

The platform validates every frame it receives and drops an invalid one (Twilio error 64107),
so nothing but ConversationRelay frames goes out here: no ``ack``, ``error``, ``seq`` or
``turnId``. A malformed or unexpected frame from the platform is logged and skipped. A reply
that was cut off (interrupt, a newer prompt) sends nothing more, never its ``end``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from ..errors import CallagentError, InvalidRequest
from ..events import Error, StageCode, TextDelta
from ..stages import Stage
from ..turns import Turn, TurnRequest
from . import twilio
from . import validation as v
from .keys import COMMANDS, SETTINGS
from .outbox import Outbox, cancel_all, serve_socket

log = structlog.get_logger(component="callagent.relay")

async def websocket(request: web.Request) -> web.WebSocketResponse:
    twilio.verify_signature(request, request.query, websocket=True)  # 403 before the upgrade
    return await serve_socket(request, lambda request, ws: RelaySocket(request, ws).serve())


class RelaySocket:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        app = request.app
        self.settings = settings = app[SETTINGS]
        self.commands = app[COMMANDS]
        self.end_rule = twilio.EndRule(settings)
        self.segment = v.segment_options(settings.twilio_segment)
        self.outbox = Outbox(request, ws, settings.ws_send_queue, settings.ws_send_timeout)
        self.session_id: str | None = None
        self.turn: Turn | None = None  # the turn whose reply this socket speaks
        self.partial_text: str | None = None  # the partial prompt self.turn answers, if it does
        self.pumps: dict[str, asyncio.Task[None]] = {}  # turn id -> pump
        self.ended = False  # `end` was sent: the platform closes the session
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "setup": self.on_setup,
            "prompt": self.on_prompt,
            "interrupt": self.on_interrupt,
            "dtmf": self.on_dtmf,
            "error": self.on_error,
            "info": self.on_info,
        }

    # -- reading ---------------------------------------------------------------------------

    async def serve(self) -> None:
        writer = asyncio.create_task(self.outbox.run(), name="relay-writer")
        try:
            async for msg in self.outbox.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    log.warning("relay_frame_skipped", session_id=self.session_id, reason="binary frame")
                await self.outbox.room()
        finally:
            await cancel_all([*self.pumps.values(), writer])

    async def handle(self, raw: str) -> None:
        kind: Any = None
        try:
            msg = v.parse_frame(raw, self.settings.max_body_bytes)
            kind = msg.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise InvalidRequest(f"type: must be one of {', '.join(self.handlers)}")
            await handler(msg)
        except CallagentError as e:
            # No error frame exists in this protocol: the platform would reject one.
            log.warning(
                "relay_frame_skipped",
                session_id=self.session_id,
                type=kind if isinstance(kind, str) else None,
                reason=e.msg,
            )

    def require_setup(self) -> str:
        if self.session_id is None:
            raise InvalidRequest("no `setup` frame yet")
        return self.session_id

    # -- frames from the platform ----------------------------------------------------------

    async def on_setup(self, msg: dict[str, Any]) -> None:
        if self.session_id is not None:
            raise InvalidRequest("a second `setup` frame")
        parameters = v.variables(msg, "customParameters")
        if parameters.get("sessionId") is not None:
            session_id = v.session_id(parameters)
        else:
            session_id = v.session_id(msg, "callSid")
        self.session_id = session_id
        variables = {k: value for k, value in parameters.items() if k != "sessionId"}
        if variables:
            await self.commands.set_variables(session_id, variables)
        structlog.contextvars.bind_contextvars(session_id=session_id)
        log.info("relay_setup", variables=len(variables))

    async def on_prompt(self, msg: dict[str, Any]) -> None:
        session_id = self.require_setup()
        text = v.required_str(msg, "voicePrompt", self.settings.max_text_chars)
        last = msg.get("last", True)
        if not isinstance(last, bool):
            raise InvalidRequest("last: must be true or false")
        if self.ended or not text.strip() or not (last or self.settings.twilio_partial_prompts):
            return  # a partial transcript, unless partial prompts are on, waits for the last one
        if last and text == self.partial_text:
            self.partial_text = None
            return  # the final transcript is the partial one already being answered
        turn = self.commands.start_turn(TurnRequest(session_id, text, transport="twilio", segment=self.segment))
        self.turn = turn
        self.partial_text = None if last else text
        self.pumps[turn.id] = asyncio.create_task(self.pump(turn), name=f"relay-pump-{turn.id}")

    async def on_interrupt(self, msg: dict[str, Any]) -> None:
        session_id = self.require_setup()
        heard = v.optional_str(msg, "utteranceUntilInterrupt", self.settings.max_text_chars)
        duration = interrupt_duration(msg.get("durationUntilInterruptMs"))
        if self.turn is not None:  # else the caller talked over the platform's welcome greeting
            interruption = await self.commands.interrupt(session_id, heard, self.turn.id)
            pump = self.pumps.get(interruption.turn.id) if interruption.turn is not None else None
            if pump is not None:
                await asyncio.shield(pump)  # it has sent the last of the stopped reply
            log.info(
                "relay_interrupt",
                turn_id=interruption.turn_id,
                cancelled=interruption.cancelled,
                heard_chars=len(heard or ""),
                duration_ms=duration,
            )
        if not self.ended:
            self.send(self.text_frame("", last=True))

    async def on_dtmf(self, msg: dict[str, Any]) -> None:
        digit = v.optional_str(msg, "digit", 8)
        log.info("relay_dtmf", session_id=self.session_id, digit=digit)

    async def on_error(self, msg: dict[str, Any]) -> None:
        description = msg.get("description")
        log.warning(
            "relay_platform_error",
            session_id=self.session_id,
            description=description[:500] if isinstance(description, str) else None,
        )

    async def on_info(self, msg: dict[str, Any]) -> None:
        log.debug("relay_info", session_id=self.session_id, name=str(msg.get("name", ""))[:64])

    # -- a reply ---------------------------------------------------------------------------

    async def pump(self, turn: Turn) -> None:
        """The turn's events as text frames; its `end`, if its stage asks, after the last one."""
        stage: Stage | None = None
        try:
            async for event in turn.events():
                if isinstance(event, TextDelta):
                    if event.text:
                        await self.outbox.send(self.text_frame(event.text, last=False))
                elif isinstance(event, StageCode):
                    stage = Stage(event.code, event.name)
                elif isinstance(event, Error):
                    log.warning("relay_turn_failed", session_id=turn.session_id, turn_id=turn.id, error=event.type)
            # Done or Error: a reply cut off by an interrupt or a newer prompt says nothing more.
            if turn.cancel_requested or self.turn is not turn or self.ended:
                return
            self.send(self.text_frame("", last=True))
            reason = self.end_rule.reason(stage) if stage is not None else None
            if reason is not None and stage is not None:
                self.ended = True
                data = twilio.handoff_data(stage, reason, turn.session_id, turn.id)
                self.send({"type": "end", "handoffData": data})
                log.info("relay_end", session_id=turn.session_id, turn_id=turn.id, reason=reason, stage=stage.code)
        finally:
            if not turn.ended:  # the socket closed mid-turn
                turn.cancel()
                await asyncio.shield(turn.wait())
            self.pumps.pop(turn.id, None)

    def text_frame(self, token: str, last: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "text", "token": token, "last": last}
        if self.settings.twilio_lang:
            frame["lang"] = self.settings.twilio_lang
        return frame

    def send(self, frame: dict[str, Any]) -> None:
        self.outbox.put(frame)


def interrupt_duration(value: Any) -> float | None:
    """``durationUntilInterruptMs``: a number, or a string of one (both occur); else unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
