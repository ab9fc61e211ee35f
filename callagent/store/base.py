"""The session store: variables, transcripts, the per-session turn lease, cancellation.

Implementations: ``MemoryStore`` (``memory://``, one process, nothing kept), ``SQLiteStore``
(``sqlite:///path``, the embedded default, one process, survives restarts) and ``RedisStore``
(``redis://``, shared by several processes behind a load balancer).

The lease makes "one turn at a time per session" hold across processes: a turn runs only
while it owns ``lease(session)``; the instance renews it while the turn runs and releases it
on every exit path, and a lease whose owner died simply expires (``store.lease``). Cancellation of a turn running
in another process travels through ``publish_cancel``; every process hands what it receives
to the callback registered with ``on_cancel``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

CancelCallback = Callable[[str, str | None, str | None], None]
"""Called with (session_id, spoken_text, turn_id) when another process asks to stop the
session's turn (``turn_id`` None: whatever turn runs)."""


@dataclass(slots=True)
class TurnRecord:
    """One transcript row: what the caller said, what the agent replied, how it went."""

    session_id: str
    turn_id: str
    caller_text: str
    time_stamp: str = ""
    transport: str = "http"
    reply_text: str = ""
    spoken_text: str | None = None
    stage_codes: list[str] = field(default_factory=list)  # every stage reported, in order
    status: str = "running"  # running | completed | cancelled | failed
    error_type: str | None = None
    upstream_records: list[str] = field(default_factory=list)
    # Values the workflow overwrote during this turn, as they were before it (None: absent).
    variables_before: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0  # unix time
    timings: dict[str, float | None] = field(default_factory=dict)
    deleted: bool = False  # its upstream records were deleted by delete_last_turn

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson encodes dataclasses natively, far faster than asdict

    def copy(self) -> TurnRecord:
        """A copy that shares nothing mutable with this one (what a store keeps)."""
        before = self.variables_before
        return TurnRecord(
            self.session_id,
            self.turn_id,
            self.caller_text,
            self.time_stamp,
            self.transport,
            self.reply_text,
            self.spoken_text,
            list(self.stage_codes),
            self.status,
            self.error_type,
            list(self.upstream_records),
            orjson.loads(orjson.dumps(before)) if before else {},  # values may be nested JSON
            self.received_at,
            dict(self.timings),
            self.deleted,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TurnRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot serve right now."""
        ...

    async def session_exists(self, session_id: str) -> bool: ...

    async def get_variables(self, session_id: str) -> dict[str, Any]: ...

    async def set_variables(self, session_id: str, values: Mapping[str, Any]) -> None:
        """Merge ``values`` into the session's variables (creating the session)."""
        ...

    async def delete_variables(self, session_id: str, keys: list[str]) -> None:
        """Remove these variables (absent ones are no error)."""
        ...

    async def delete_session(self, session_id: str) -> None: ...

    async def save_turn(self, record: TurnRecord) -> None:
        """Insert or replace the transcript row of ``record.turn_id``."""
        ...

    async def turns(self, session_id: str) -> list[TurnRecord]:
        """The session's transcript, oldest first."""
        ...

    async def last_turn(self, session_id: str) -> TurnRecord | None:
        """The newest transcript row not marked deleted."""
        ...

    async def acquire_lease(self, session_id: str, owner: str, ttl: float, replaces: str | None = None) -> bool:
        """Take the lease if it is free, already ``owner``'s, or ``replaces``'s."""
        ...

    async def renew_lease(self, session_id: str, owner: str, ttl: float) -> bool: ...

    async def renew_leases(self, leases: list[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew many (session, owner) leases in one round trip; True for each one renewed."""
        ...

    async def release_lease(self, session_id: str, owner: str) -> bool:
        """Never raises; False if the store could not be reached (the lease then expires)."""
        ...

    async def lease_owner(self, session_id: str) -> str | None:
        """The turn id holding the session's lease, if a live one does."""
        ...

    async def publish_cancel(self, session_id: str, spoken_text: str | None, turn_id: str | None = None) -> None: ...

    def on_cancel(self, callback: CancelCallback) -> None: ...
