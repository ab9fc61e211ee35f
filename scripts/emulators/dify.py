"""A Dify service API emulator: a chat, agent or chatflow app as Dify really serves it.

Written from Dify's service API (``controllers/service_api/app``) and its streaming task
pipelines; it is one file because the API surface callagent uses is one whole (messages, stop,
conversations, conversation variables), and splitting it would only scatter shared state.

What it reproduces:

- ``POST /v1/chat-messages`` streaming: ``data: {...}`` frames whose ``event`` field names them
  (no SSE ``event:`` line), in Python's ASCII-escaped JSON style (``json_style="compact"``:
  compact UTF-8), and bare ``event: ping`` blocks. A chatflow sends ``workflow_started``,
  ``node_*``, ``message`` pieces, ``workflow_finished``, ``message_end``; a chat app only the
  messages; an agent app ``agent_thought``, ``agent_message`` pieces and the answer AGAIN in a
  closing ``message``;
- ``inputs`` count on a conversation's first message only: a missing required input, a non-string
  text input, a select value outside its options are 400s, undeclared inputs are dropped; later
  messages' inputs are ignored. An empty ``query`` is a 400, an unknown ``conversation_id`` a 404;
- generation runs on after the client goes away (Dify's generation is a worker, not the HTTP
  request): only ``POST /v1/chat-messages/{task_id}/stop`` with the task's own ``user`` stops
  it; a stop with another user answers success and does nothing;
- conversations (list, delete with a JSON ``user`` body: 204) and conversation variables (paged
  list, typed PUT: a type mismatch is a 400), all scoped by ``user``;
- ``GET /v1/parameters`` with the app's ``user_input_form``.

The reply comes from a ``ScriptedBrain`` (replies in turn, or a function of the query and the
conversation, which may also set conversation variables like a Variable Assigner node), cut into
``chunk_chars`` pieces. Fault modes (``FAULT_MODES``) make the next calls misbehave. Tests read
everything from the app under ``EMULATOR``: requests, tasks, stop calls, conversations; other
processes from ``GET /__emulator/state``.

Usage: ``python -m scripts.emulators.dify --port 5001 [--mode advanced-chat] [--reply TEXT ...]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from .common import DEFAULT_REPLY, FaultSwitch, ScriptedReplies, emulator_parser, pieces, serve

REPLACEMENT: Final = "抱歉，这个问题我无法回答。"
THINKING: Final = "用户报告了交通事故，先确认是否有人受伤。"
MODES: Final = ("advanced-chat", "chat", "agent-chat")

FAULT_MODES: Final = frozenset(
    {
        "http500",  # HTTP 500 with Dify's error body
        "http400",  # HTTP 400 completion_request_error
        "error_before",  # HTTP 200 and an `error` event before any answer
        "error_mid",  # a few pieces, an `error` event, the stream ends
        "workflow_failed",  # a few pieces, a failed `workflow_finished`, an `error` event
        "eof",  # a few pieces, then the body ends without message_end
        "no_first_token",  # headers, then silence (generation hangs until stopped)
        "stall",  # a few pieces, then silence until stopped
        "pings_only",  # only bare `event: ping` blocks
        "malformed",  # garbage lines interleaved, the stream still completes
        "unknown_events",  # node, tts, unknown events and empty answers interleaved; completes
        "reasoning",  # `reasoning_chunk` events and a `<think>` block in the answer
        "moderation",  # a few pieces, then `message_replace` with the preset answer
        "paused",  # a few pieces, then `workflow_paused` (Human Input) ends the stream
        "slow_headers",  # Emulator.slow_headers_delay before the response starts
        "abort",  # the TCP connection is aborted mid-stream
    }
)
_CUT_SHORT: Final = frozenset({"error_mid", "workflow_failed", "eof", "stall", "abort", "moderation", "paused"})
_END: Final = b""  # the stream ends here
_ABORT: Final = b"abort"


@dataclass(slots=True)
class Variable:
    id: str
    name: str
    value_type: str  # string | number | boolean | object | secret | array[string] ...
    value: Any
    description: str = ""


@dataclass(slots=True)
class Conversation:
    id: str
    user: str
    inputs: dict[str, Any]
    variables: dict[str, Variable]
    messages: list[tuple[str, str]] = field(default_factory=list)  # (query, answer) saved
    updated_at: float = field(default_factory=time.time)


class ScriptedBrain(ScriptedReplies[[str, Conversation]]):
    """Replies in turn (the last one repeats), or ``reply(query, conversation) -> text``."""


@dataclass(slots=True)
class Task:
    """One chat-messages call: its generation and its HTTP stream. Times are loop times."""

    task_id: str
    user: str
    conversation_id: str
    query: str
    fault: str | None
    started: float
    outcome: str = "running"  # generation: completed | stopped | failed | paused
    stream_outcome: str = "running"  # the HTTP stream: completed | disconnected
    disconnected_at: float | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # generation ended
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the HTTP handler ended
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)


@dataclass(slots=True)
class StopCall:
    task_id: str
    user: str
    matched: bool  # the task exists and belongs to this user: it was stopped


class Emulator(FaultSwitch):
    def __init__(self, brain: ScriptedBrain, *, api_key: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        super().__init__(FAULT_MODES)
        self.brain = brain
        self.api_key = api_key
        self.mode = mode
        self.user_input_form: list[dict[str, Any]] = []
        self.variable_declarations: list[tuple[str, str, Any]] = []  # (name, value_type, default)
        self.chunk_chars = 4
        self.chunk_delay = 0.0
        self.ping_interval = 10.0
        self.slow_headers_delay = 10.0
        self.fault_after_chunks = 3
        self.json_style = "ascii"  # Dify's json.dumps default; "compact": UTF-8 without blanks
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body or query)
        self.tasks: list[Task] = []
        self.stops: list[StopCall] = []
        self.conversations: dict[str, Conversation] = {}
        self.workers: set[asyncio.Task[None]] = set()

    def encode(self, payload: dict[str, Any]) -> bytes:
        if self.json_style == "compact":
            return b"data: " + orjson.dumps(payload) + b"\n\n"
        return b"data: " + json.dumps(payload).encode() + b"\n\n"


EMULATOR: Final = web.AppKey("dify_emulator", Emulator)


def create_emulator_app(
    brain: ScriptedBrain | None = None, *, api_key: str = "dify-test", mode: str = "advanced-chat"
) -> web.Application:
    app = web.Application()
    app[EMULATOR] = Emulator(brain or ScriptedBrain(), api_key=api_key, mode=mode)
    app.router.add_get("/v1/parameters", parameters)
    app.router.add_post("/v1/chat-messages", chat_messages)
    app.router.add_post("/v1/chat-messages/{task_id}/stop", stop_task)
    app.router.add_get("/v1/conversations", list_conversations)
    app.router.add_delete("/v1/conversations/{cid}", delete_conversation)
    app.router.add_get("/v1/conversations/{cid}/variables", list_variables)
    app.router.add_put("/v1/conversations/{cid}/variables/{vid}", update_variable)
    app.router.add_get("/__emulator/state", control_state)
    app.on_cleanup.append(_stop_workers)
    return app


async def _stop_workers(app: web.Application) -> None:
    workers = list(app[EMULATOR].workers)
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


# -- helpers ----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "status": status}, status=status)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def _guard(request: web.Request) -> tuple[Emulator, dict[str, Any], web.Response | None]:
    """The emulator, the JSON body (or the query) and an error response, if any."""
    emu = request.app[EMULATOR]
    data: Any = dict(request.query)
    if request.method in ("POST", "PUT", "DELETE") and request.can_read_body:
        try:
            data = await request.json(loads=orjson.loads)
        except ValueError:
            return emu, {}, _error(400, "invalid_param", "the body is not JSON")
    if not isinstance(data, dict):
        return emu, {}, _error(400, "invalid_param", "the body must be a JSON object")
    emu.requests.append((request.method, request.path, data))
    if request.headers.get("Authorization") != f"Bearer {emu.api_key}":
        return emu, data, _error(401, "unauthorized", "Access token is invalid")
    user = data.get("user")
    if request.path != "/v1/parameters" and (not isinstance(user, str) or not user):
        return emu, data, _error(400, "invalid_param", "Arg user must be provided.")
    return emu, data, None


def _page(items: list[Any], data: dict[str, Any], key: Callable[[Any], str]) -> dict[str, Any]:
    limit = int(data.get("limit") or 20)
    last_id = data.get("last_id")
    if last_id:
        ids = [key(i) for i in items]
        items = items[ids.index(last_id) + 1 :] if last_id in ids else []
    return {"limit": limit, "has_more": len(items) > limit, "data": items[:limit]}


# -- parameters and messages ------------------------------------------------------------------


async def parameters(request: web.Request) -> web.Response:
    emu, _, error = await _guard(request)
    if error:
        return error
    return _json({"opening_statement": "", "user_input_form": emu.user_input_form, "system_parameters": {}})


def _check_inputs(form: list[dict[str, Any]], inputs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The declared inputs kept, or Dify's 400 message."""
    kept: dict[str, Any] = {}
    for item in form:
        ((kind, spec),) = item.items()
        name = spec["variable"]
        value = inputs.get(name)
        if value is None or value == "":
            if spec.get("required"):
                return {}, f"{name} is required in input form"
            continue
        if kind in ("text-input", "paragraph", "select") and not isinstance(value, str):
            return {}, f"{name} in input form must be a string"
        if kind == "select" and value not in spec.get("options", []):
            return {}, f"{name} in input form must be one of the following: {spec.get('options')}"
        if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
            return {}, f"{name} in input form must be a valid number"
        kept[name] = value
    return kept, None


async def chat_messages(request: web.Request) -> web.StreamResponse:
    emu, data, error = await _guard(request)
    if error:
        return error
    query, inputs, user = data.get("query"), data.get("inputs"), data["user"]
    if not isinstance(inputs, dict):
        return _error(400, "invalid_param", "inputs is required")
    if not isinstance(query, str) or not query.strip():
        return _error(400, "invalid_param", "query is required")
    conversation_id = data.get("conversation_id") or ""
    if conversation_id:
        conversation = emu.conversations.get(conversation_id)
        if conversation is None or conversation.user != user:
            return _error(404, "not_found", "Conversation Not Exists.")
    else:
        kept, problem = _check_inputs(emu.user_input_form, inputs)
        if problem:
            return _error(400, "invalid_param", problem)
        variables = {n: Variable(str(uuid.uuid4()), n, t, v) for n, t, v in emu.variable_declarations}
        conversation = Conversation(str(uuid.uuid4()), user, kept, variables)
        emu.conversations[conversation.id] = conversation
    fault = emu.take_fault()
    if fault == "http500":
        return _error(500, "internal_server_error", "The server encountered an internal error.")
    if fault == "http400":
        return _error(400, "completion_request_error", "[models] Server Unavailable Error")
    loop = asyncio.get_running_loop()
    task = Task(str(uuid.uuid4()), user, conversation.id, query, fault, loop.time())
    emu.tasks.append(task)
    worker = loop.create_task(_Generation(emu, task, conversation).run())
    emu.workers.add(worker)
    worker.add_done_callback(emu.workers.discard)
    return await _serve(request, emu, task)


async def _serve(request: web.Request, emu: Emulator, task: Task) -> web.StreamResponse:
    """Write the generation's frames as they come; leaving early does not stop it."""
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    try:
        if task.fault == "slow_headers":
            await asyncio.sleep(emu.slow_headers_delay)
        await response.prepare(request)
        while True:
            try:
                frame = await asyncio.wait_for(task.queue.get(), emu.ping_interval)
            except TimeoutError:
                await response.write(b"event: ping\n\n")
                continue
            if frame == _ABORT and request.transport is not None:
                request.transport.abort()
                return response
            if frame == _END:
                task.stream_outcome = "completed"
                return response
            await response.write(frame)
    except (asyncio.CancelledError, ConnectionResetError):
        task.stream_outcome, task.disconnected_at = "disconnected", loop.time()
        raise
    finally:
        task.closed.set()


class _Generation:
    """Dify's worker for one message: runs until done or stopped, whoever listens."""

    def __init__(self, emu: Emulator, task: Task, conversation: Conversation) -> None:
        self.emu, self.task, self.conversation = emu, task, conversation
        self.message_id = str(uuid.uuid4())

    def emit(self, event: str, **fields: Any) -> None:
        base = {"event": event, "task_id": self.task.task_id}
        if event not in ("workflow_started", "workflow_finished", "node_started", "node_finished"):
            base |= {"id": self.message_id, "message_id": self.message_id}
        base |= {"conversation_id": self.conversation.id, "created_at": int(time.time())}
        self.task.queue.put_nowait(self.emu.encode(base | fields))

    async def pause(self, seconds: float | None) -> bool:
        """Wait (None: until stopped); True when the task was stopped meanwhile."""
        try:
            await asyncio.wait_for(self.task.stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        task = self.task
        try:
            task.outcome = await self._generate()
        finally:
            task.ended.set()
            task.queue.put_nowait(_END)

    async def _generate(self) -> str:
        emu, task, fault = self.emu, self.task, self.task.fault
        workflow = emu.mode == "advanced-chat"
        answer_event = "agent_message" if emu.mode == "agent-chat" else "message"
        if fault in ("no_first_token", "pings_only"):
            await self.pause(None)
            return "stopped"
        if fault == "error_before":
            self.emit("error", status=500, code="internal_server_error", message="model is overloaded")
            return "failed"
        if workflow:
            self.emit("workflow_started", workflow_run_id=task.task_id, data={"id": task.task_id, "inputs": {}})
            self.emit("node_started", workflow_run_id=task.task_id, data={"node_id": "llm", "node_type": "llm"})
        if emu.mode == "agent-chat":
            self.emit("agent_thought", position=1, thought="", tool="", observation="")
        reply = emu.brain.reply(task.query, self.conversation)
        if fault == "reasoning":
            self.emit("reasoning_chunk", data={"text": THINKING})
            reply = f"<think>{THINKING}</think>\n\n{reply}"
        sent = ""
        for index, piece in enumerate(pieces(reply, emu.chunk_chars)):
            if fault in _CUT_SHORT and index >= emu.fault_after_chunks:
                return await self._cut_short(sent)
            if fault == "malformed":
                task.queue.put_nowait(b"data: {not json\n\nnonsense line\n\n")
            if fault == "unknown_events":
                self.emit("tts_message", audio="")
                self.emit("x_future_event", answer="不该说出来")
                self.emit(answer_event, answer="")
            self.emit(answer_event, answer=piece)
            sent += piece
            if emu.chunk_delay and await self.pause(emu.chunk_delay):
                self._save(sent)
                return "stopped"
        if emu.mode == "agent-chat":
            self.emit("agent_thought", position=2, thought=reply)
            self.emit("message", answer=reply)  # an agent app repeats the whole answer
        if workflow:
            self.emit("node_finished", workflow_run_id=task.task_id, data={"node_id": "llm", "status": "succeeded"})
            self.emit("workflow_finished", workflow_run_id=task.task_id, data={"status": "succeeded"})
        self._save(reply)
        self.emit("message_end", metadata={"usage": {"total_tokens": len(reply)}})
        return "completed"

    async def _cut_short(self, sent: str) -> str:
        fault, task = self.task.fault, self.task
        if fault == "error_mid":
            self.emit("error", status=400, code="completion_request_error", message="[models] Rate Limit Error")
            return "failed"
        if fault == "workflow_failed":
            data = {"status": "failed", "error": "Node LLM run failed: timeout"}
            self.emit("workflow_finished", workflow_run_id=task.task_id, data=data)
            self.emit("error", status=500, code="internal_server_error", message="Node LLM run failed: timeout")
            return "failed"
        if fault == "moderation":
            self.emit("message_replace", answer=REPLACEMENT, reason="output_moderation")
            self._save(REPLACEMENT)
            self.emit("message_end", metadata={})
            return "completed"
        if fault == "paused":
            self.emit("workflow_paused", workflow_run_id=task.task_id, data={"node_id": "human_input"})
            self._save(sent)
            return "paused"
        if fault == "abort":
            task.queue.put_nowait(_ABORT)
            await self.pause(None)
            return "stopped"
        if fault == "stall":
            await self.pause(None)
            self._save(sent)
            return "stopped"
        return "failed"  # eof: the stream simply ends

    def _save(self, answer: str) -> None:
        self.conversation.messages.append((self.task.query, answer))
        self.conversation.updated_at = time.time()


async def stop_task(request: web.Request) -> web.Response:
    emu, data, error = await _guard(request)
    if error:
        return error
    task_id, user = request.match_info["task_id"], data["user"]
    task = next((t for t in emu.tasks if t.task_id == task_id), None)
    matched = task is not None and task.user == user
    emu.stops.append(StopCall(task_id, user, matched))
    if matched and task is not None:
        task.stop.set()
    return _json({"result": "success"})  # Dify answers success whoever asked


# -- conversations and their variables --------------------------------------------------------


async def _guard_conversation(request: web.Request) -> tuple[Emulator, dict[str, Any], Conversation] | web.Response:
    """``_guard``, then the caller's own conversation the path names; else the error response."""
    emu, data, error = await _guard(request)
    if error:
        return error
    conversation = emu.conversations.get(request.match_info["cid"])
    if conversation is None or conversation.user != data["user"]:
        return _error(404, "not_found", "Conversation Not Exists.")
    return emu, data, conversation


async def list_conversations(request: web.Request) -> web.Response:
    emu, data, error = await _guard(request)
    if error:
        return error
    mine = sorted(
        (c for c in emu.conversations.values() if c.user == data["user"]), key=lambda c: c.updated_at, reverse=True
    )
    rows = [{"id": c.id, "name": "", "inputs": c.inputs, "status": "normal", "updated_at": c.updated_at} for c in mine]
    return _json(_page(rows, data, lambda r: str(r["id"])))


async def delete_conversation(request: web.Request) -> web.Response:
    guarded = await _guard_conversation(request)
    if isinstance(guarded, web.Response):
        return guarded
    emu, _, conversation = guarded
    del emu.conversations[conversation.id]
    return web.Response(status=204)


async def list_variables(request: web.Request) -> web.Response:
    guarded = await _guard_conversation(request)
    if isinstance(guarded, web.Response):
        return guarded
    _, data, conversation = guarded
    rows = [
        {"id": v.id, "name": v.name, "value_type": v.value_type, "value": v.value, "description": v.description}
        for v in conversation.variables.values()
    ]
    return _json(_page(rows, data, lambda r: str(r["id"])))


_TYPES: Final = {"string": str, "secret": str, "number": int | float, "boolean": bool, "object": dict}


async def update_variable(request: web.Request) -> web.Response:
    guarded = await _guard_conversation(request)
    if isinstance(guarded, web.Response):
        return guarded
    _, data, conversation = guarded
    variable = next((v for v in conversation.variables.values() if v.id == request.match_info["vid"]), None)
    if variable is None:
        return _error(404, "not_found", "Conversation Variable Not Exists.")
    value = data.get("value")
    expected = list if variable.value_type.startswith("array") else _TYPES.get(variable.value_type, object)
    if not isinstance(value, expected) or (variable.value_type == "number" and isinstance(value, bool)):
        return _error(400, "bad_request", f"Type mismatch: variable expects {variable.value_type}")
    variable.value = value
    return _json({"id": variable.id, "name": variable.name, "value_type": variable.value_type, "value": value})


async def control_state(request: web.Request) -> web.Response:
    """What other processes assert on: tasks, stop calls, conversations."""
    emu = request.app[EMULATOR]
    tasks = [
        {"task_id": t.task_id, "user": t.user, "conversation_id": t.conversation_id, "query": t.query}
        | {"outcome": t.outcome, "stream_outcome": t.stream_outcome}
        for t in emu.tasks
    ]
    stops = [{"task_id": c.task_id, "user": c.user, "matched": c.matched} for c in emu.stops]
    conversations = [{"id": c.id, "user": c.user, "messages": c.messages} for c in emu.conversations.values()]
    return _json({"tasks": tasks, "stops": stops, "conversations": conversations})


def main(argv: Sequence[str] | None = None) -> None:
    parser = emulator_parser(
        "scripts.emulators.dify",
        "Serve a Dify service API emulator.",
        port=5001,
        api_key="dify-test",
        fault_modes=FAULT_MODES,
    )
    parser.add_argument("--mode", choices=MODES, default="advanced-chat")
    args = parser.parse_args(argv)
    app = create_emulator_app(ScriptedBrain(args.reply or [DEFAULT_REPLY]), api_key=args.api_key, mode=args.mode)
    app[EMULATOR].set_fault(args.fault)
    app[EMULATOR].chunk_delay = args.chunk_delay
    serve(app, args)


if __name__ == "__main__":
    main()
