"""What the emulator has seen and stored, and its run-time settings (``Emulator``).

Everything a test asserts on sits on the app under ``EMULATOR``: the requests received, the
stored chats and one ``StreamLog`` per completions call with its timings.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from ..common import FaultSwitch
from .brains import Brain
from .builds import build_named
from .faults import FAULT_MODES

if TYPE_CHECKING:
    from .completions import Run


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    headers: dict[str, str]
    peer: str = ""  # "host:port" of the client's TCP connection (a reused connection keeps it)


@dataclass(slots=True)
class Chat:
    app_id: str
    chat_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    custom_title: str = ""
    top: bool = False
    update_time: str = ""
    node_responses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by AI dataId
    awaiting: dict[str, Any] | None = None  # the interactive node the last run paused at


@dataclass(slots=True)
class StreamLog:
    """One completions call. Times are ``loop.time()`` values."""

    chat_id: str
    stream: bool
    detail: bool
    fault: str | None
    started: float
    first_chunk_at: float | None = None  # first non-empty answer/fastAnswer chunk written
    finished_at: float | None = None  # the response ended normally
    disconnected_at: float | None = None  # the client went away before the end
    outcome: str = "running"  # completed | disconnected | error | eof | aborted | refused
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the handler ended

    def summary(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "closed"}
        return out | {"closed": self.closed.is_set()}


class Emulator(FaultSwitch):
    """Settings (mutable at run time) and everything the emulator has seen and stored."""

    def __init__(
        self,
        brain: Brain,
        *,
        api_key: str,
        app_id: str,
        chunk_chars: int,
        chunk_delay: float,
        first_chunk_delay: float,
        heartbeat_interval: float,
        build: str,
        fault: str | None,
    ) -> None:
        if chunk_chars < 1:
            raise ValueError("chunk_chars must be >= 1")
        super().__init__(FAULT_MODES, fault)
        self.build = build_named(build)
        self.brain = brain
        self.api_key = api_key
        self.app_id = app_id
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay
        self.first_chunk_delay = first_chunk_delay
        self.heartbeat_interval = heartbeat_interval
        self.slow_headers_delay = 10.0
        self.fault_after_chunks = 3  # answer chunks sent before a cut-short fault strikes
        self.save_delay = 0.0  # seconds between workflowDuration and the stop chunk (saving the chat)
        # Seconds a run goes on after its client left before the workflow returns and the chat is
        # saved (a slow node finishing), on the releases where leaving does not stop it.
        self.finish_delay = 0.05
        # The app's declared global variables, key -> label (None: every variable is declared).
        # From 4.11 only declared ones reach the workflow; the others are dropped, not stored.
        self.declared_variables: dict[str, str] | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # runs finishing after their client left
        self.requests: list[RecordedRequest] = []
        self.chats: dict[tuple[str, str], Chat] = {}
        self.streams: list[StreamLog] = []
        self._runs: dict[tuple[str, str], set[Run]] = {}

    def set_build(self, name: str) -> None:
        self.build = build_named(name)

    def generating(self, chat_id: str) -> bool:
        """A run of the chat has not been saved yet (4.14.11+ refuse a second one: 504001)."""
        return any(not run.finalized for run in self._runs.get((self.app_id, chat_id), ()))

    def chat(self, chat_id: str, app_id: str | None = None) -> Chat | None:
        return self.chats.get((app_id or self.app_id, chat_id))

    def reset(self) -> None:
        """Forget requests, chats and stream logs (settings stay)."""
        self.requests.clear()
        self.chats.clear()
        self.streams.clear()

    def _stored_chat(self, chat_id: str) -> Chat:
        key = (self.app_id, chat_id)
        chat = self.chats.get(key)
        if chat is None:
            chat = self.chats[key] = Chat(self.app_id, chat_id, update_time=now_iso())
        return chat


EMULATOR: Final = web.AppKey("emulator", Emulator)
REQUEST_BODY: Final = web.RequestKey("request_body", object)  # the request's parsed JSON or None


def authorized(request: web.Request, emu: Emulator) -> bool:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return scheme == "Bearer" and key.strip() == emu.api_key


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_ids = itertools.count(int(datetime.now(UTC).timestamp()) << 64)


def new_id() -> str:
    """A 24-hex-digit id shaped like a MongoDB ObjectId (seconds first, then a counter)."""
    return f"{next(_ids):024x}"


def text_value(text: str) -> dict[str, Any]:
    return {"type": "text", "text": {"content": text}}
