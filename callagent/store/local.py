"""Turn leases and cancellation for the stores that live in one process (memory, SQLite).

Within one process the turn engine already cancels a session's running turn itself, so
publishing a cancel has nobody else to tell; the lease is a dict with expiry times.
"""

from __future__ import annotations

import time

from .base import CancelCallback


class ProcessLocalLeases:
    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    async def acquire_lease(self, session_id: str, owner: str, ttl: float, replaces: str | None = None) -> bool:
        now = time.monotonic()
        held = self._leases.get(session_id)
        if held and held[0] not in (owner, replaces) and held[1] > now:
            return False
        self._leases[session_id] = (owner, now + ttl)
        return True

    async def renew_lease(self, session_id: str, owner: str, ttl: float) -> bool:
        held = self._leases.get(session_id)
        if not held or held[0] != owner:
            return False
        self._leases[session_id] = (owner, time.monotonic() + ttl)
        return True

    async def renew_leases(self, leases: list[tuple[str, str]], ttl: float) -> list[bool]:
        return [await self.renew_lease(session_id, owner, ttl) for session_id, owner in leases]

    async def release_lease(self, session_id: str, owner: str) -> bool:
        self.release_lease_now(session_id, owner)
        return True

    def release_lease_now(self, session_id: str, owner: str) -> None:
        held = self._leases.get(session_id)
        if held and held[0] == owner:
            del self._leases[session_id]

    async def lease_owner(self, session_id: str) -> str | None:
        held = self._leases.get(session_id)
        return held[0] if held and held[1] > time.monotonic() else None

    async def publish_cancel(self, session_id: str, spoken_text: str | None, turn_id: str | None = None) -> None:
        return None

    def on_cancel(self, callback: CancelCallback) -> None:
        return None
