"""The OpenAI-compatible route: voice platforms call callagent as their "custom LLM".

``POST /v1/chat/completions`` (and ``/chat/completions``), ``GET /v1/models`` (and ``/models``).
A codec over the session-command layer like every transport: the request is decoded by
``openai_compat_request``, the turn runs through ``SessionCommands``, the reply is encoded by
``openai_compat_wire``; stage codes become the platform's own tool calls (``openai_compat_tools``).

What the real clients need, and how it is met:

- Barge-in is the platform closing the stream. The server runs with aiohttp's handler
  cancellation (``__main__``, and the test server), so the handler is cancelled the moment the
  connection is lost, whatever it awaits: leaving ``commands.turn`` cancels the turn, which
  closes the upstream response, also before the upstream's first byte.
- LiveKit Agents drops a request that sent nothing for 10 s and retries it: the role chunk
  goes out at once and a keep-alive comment every ``CALLAGENT_OPENAI_ROUTE_KEEPALIVE`` seconds.
  A retry carries the same messages as the attempt before it (``RecentRequests``): a
  completed attempt is replayed from the transcript, a cancelled one is undone
  (``delete_last_turn``) and run again, so the caller's utterance reaches the workflow once.
- After a tool call the platform sends the tool's result: not a caller utterance, so it is
  answered without a turn (the action's ``after`` words, or an empty completion).
- The next request shows what the platform recorded of the previous reply: when that is a
  strict prefix of what was generated (or nothing), the caller heard only that much, and it
  is recorded like an interrupt's ``spokenText``.
- Errors before the stream are OpenAI error bodies (``RouteFamily``), with
  ``x-should-retry: false`` so the SDKs do not repeat a turn; an upstream failure speaks the
  fallback phrase and calls the transfer tool, with HTTP 200.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

import structlog
from aiohttp import web

from ..errors import CallagentError
from ..events import Done, Error, StageCode, TextDelta, dumps
from ..stages import Stage
from ..turns import TurnRequest, new_turn_id
from . import validation as v
from .keys import COMMANDS, SETTINGS, STAGES, STORE
from .middlewares import ROUTE_FAMILIES, RouteFamily
from .openai_compat_request import ChatRequest, parse
from .openai_compat_tools import ToolTable
from .openai_compat_wire import DONE_LINE, CompletionEncoder, Reply, ToolCall, error_response
from .stream import EventStream

log = structlog.get_logger(component="callagent.openai")

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODEL_PATHS = ("/v1/models", "/models")
RECENT_SESSIONS = 10_000


@dataclass(slots=True, frozen=True)
class Attempt:
    fingerprint: str
    turn_id: str


class RecentRequests:
    """The last request of each recent session (bounded): tells a retry from a new utterance."""

    def __init__(self, size: int = RECENT_SESSIONS) -> None:
        self._size = size
        self._last: OrderedDict[str, Attempt] = OrderedDict()

    def get(self, session_id: str) -> Attempt | None:
        return self._last.get(session_id)

    def put(self, session_id: str, attempt: Attempt) -> None:
        self._last[session_id] = attempt
        self._last.move_to_end(session_id)
        while len(self._last) > self._size:
            self._last.popitem(last=False)


TOOLS = web.AppKey("openai_tools", ToolTable)
RECENT = web.AppKey("openai_recent", RecentRequests)


def setup(app: web.Application) -> None:
    """Register the routes, their error format and bare-key auth, and their state."""
    settings = app[SETTINGS]
    app[TOOLS] = ToolTable.load(settings.tools_file or None)
    app[RECENT] = RecentRequests()
    family = RouteFamily(error_response, bare_key=True)
    families = app.get(ROUTE_FAMILIES) or {}
    app[ROUTE_FAMILIES] = families | dict.fromkeys(CHAT_PATHS + MODEL_PATHS, family)
    for path in CHAT_PATHS:
        app.router.add_post(path, chat_completions)
    for path in MODEL_PATHS:
        app.router.add_get(path, models)


async def models(request: web.Request) -> web.Response:
    model = {"id": request.app[SETTINGS].openai_route_model, "object": "model", "created": 0, "owned_by": "callagent"}
    return web.json_response({"object": "list", "data": [model]}, dumps=dumps)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    data = await v.json_body(
        request.clone(client_max_size=settings.openai_route_max_body_bytes), settings.request_read_timeout
    )
    chat = parse(request, data, settings.max_text_chars)
    structlog.contextvars.bind_contextvars(session_id=chat.session_id)
    if chat.session_source == "derived":
        log.warning("openai_session_derived", reason="the request names no session; set X-Callagent-Session")
    turn_id = await _prepare(request.app, chat)
    reply = Reply(turn_id=turn_id, prompt_chars=len(chat.utterance))
    encoder = CompletionEncoder(f"chatcmpl-{turn_id or new_turn_id()}", chat.model or settings.openai_route_model)
    pieces = _reply_text(request.app, chat, reply)
    if chat.stream:
        return await _stream(request, chat, encoder, reply, pieces)
    async with aclosing(pieces):
        async for piece in pieces:
            reply.text.append(piece)
    return web.json_response(encoder.completion(reply), dumps=dumps)


# -- before the reply -----------------------------------------------------------------------


async def _prepare(app: web.Application, chat: ChatRequest) -> str | None:
    """The turn id this request answers with; retries and what was heard are settled here.

    Sets ``chat.kind`` to ``replay`` when an earlier attempt of this very request completed.
    """
    if chat.kind != "turn":
        return None
    commands = app[COMMANDS]
    recent = app[RECENT]
    attempt = recent.get(chat.session_id)
    if attempt is not None and attempt.fingerprint == chat.fingerprint:
        # A retry: the earlier attempt's connection is gone, and its turn with it (or soon).
        await commands.interrupt(chat.session_id, None, attempt.turn_id)
        record = await app[STORE].last_turn(chat.session_id)
        if record is not None and record.turn_id == attempt.turn_id:
            if record.status != "cancelled":
                chat.kind = "replay"
                log.info("openai_retry_replayed", turn_id=record.turn_id)
                return record.turn_id
            await commands.delete_last_turn(chat.session_id)
            log.info("openai_retry_rerun", turn_id=record.turn_id)
    else:
        # This utterance supersedes a turn of the session still running or finishing (its
        # platform closed the stream): settle it first, so its transcript row is there.
        await commands.interrupt(chat.session_id)
        await _note_heard(app, chat)
    turn_id = new_turn_id()
    recent.put(chat.session_id, Attempt(chat.fingerprint, turn_id))
    return turn_id


async def _note_heard(app: web.Application, chat: ChatRequest) -> None:
    """Record what the caller heard of the previous reply, when the history shows it cut short:
    the platform's assistant message is a strict prefix of the reply (or absent), or the reply
    was cancelled."""
    if chat.previous_utterance is None or chat.heard is None:
        return
    record = await app[STORE].last_turn(chat.session_id)
    if record is None or record.spoken_text is not None or record.caller_text != chat.previous_utterance:
        return
    said, heard = record.reply_text.strip(), chat.heard.strip()
    # A cancelled reply was cut short even when the platform kept all it received.
    cut_short = heard != said or record.status == "cancelled"
    if said and cut_short and said.startswith(heard):
        await app[COMMANDS].record_heard(chat.session_id, heard, record.turn_id)
        log.info("openai_reply_cut_short", turn_id=record.turn_id, heard_chars=len(heard), said_chars=len(said))


# -- the reply ------------------------------------------------------------------------------


async def _reply_text(app: web.Application, chat: ChatRequest, reply: Reply) -> AsyncGenerator[str, None]:
    """The reply's text pieces as they exist; ``reply`` gets its stage and tool call."""
    stage: Stage | None = None
    if chat.kind == "turn":
        turn_request = TurnRequest(
            session_id=chat.session_id,
            text=chat.utterance,
            transport="openai",
            turn_id=reply.turn_id,
            segment=chat.segment,
        )
        async with app[COMMANDS].turn(turn_request) as turn:
            async for event in turn.events():
                if isinstance(event, TextDelta):
                    yield event.text
                elif isinstance(event, StageCode):
                    stage = Stage(event.code, event.name)
                    reply.stage_codes.append(event.code)
                elif isinstance(event, Error) and not app[SETTINGS].fallback_enabled:
                    raise event.error  # no fallback phrase: the platform gets the error
                elif isinstance(event, Done | Error):
                    break
    elif chat.kind == "replay":
        record = await app[STORE].last_turn(chat.session_id)
        if record is not None:
            reply.stage_codes = list(record.stage_codes)
            if record.stage_codes:
                stage = app[STAGES].resolve(record.stage_codes[-1])
            if record.reply_text:
                yield record.reply_text
    elif chat.kind == "tool_result" and chat.tool_name:
        action = app[TOOLS].action_named(chat.tool_name)
        if action is not None and action.after:
            yield action.after
    if stage is not None:
        reply.stage_code, reply.stage = stage.code, stage.name
        if not chat.tool_choice_none:
            picked = app[TOOLS].pick(stage.code, chat.tools)
            if picked is not None:
                action, tool = picked
                reply.tool_call = ToolCall(tool.name, action.call_arguments(tool, stage, chat.session_id))


async def _stream(
    request: web.Request, chat: ChatRequest, encoder: CompletionEncoder, reply: Reply, pieces: AsyncGenerator[str, None]
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    stream = EventStream(
        request,
        ping_interval=settings.openai_route_keepalive,
        send_timeout=settings.sse_send_timeout,
        slow_event="openai_slow_consumer",
        session_id=chat.session_id,
    )
    async with aclosing(pieces):
        await stream.open()
        try:
            await _relay(stream, chat, encoder, reply, pieces)
        except (ConnectionResetError, RuntimeError):
            pass  # the platform went away; leaving the block cancels the turn
        except TimeoutError:
            stream.drop()
        finally:
            await stream.close()
    return stream.response


async def _relay(
    stream: EventStream,
    chat: ChatRequest,
    encoder: CompletionEncoder,
    reply: Reply,
    pieces: AsyncGenerator[str, None],
) -> None:
    """The role chunk at once, content as it comes, then tool call, final chunk, usage, ``[DONE]``."""
    send = stream.write
    await send(encoder.role())
    try:
        async for piece in pieces:
            reply.text.append(piece)
            await send(encoder.content(piece))
    except CallagentError as e:
        await send(encoder.in_band_error(e) + DONE_LINE)
        return
    tail = encoder.tool_call(reply.tool_call) if reply.tool_call is not None else b""
    tail += encoder.final(reply)
    if chat.include_usage:
        tail += encoder.usage(reply)
    await send(tail + DONE_LINE)
