"""The session lease: one turn at a time per session, across every instance sharing a store.

A turn runs only while it holds ``lease(session)`` in the store (owner = the turn id, with an
expiry). The protocol, on top of the store's four lease operations:

- **acquire**: take the lease; if another instance's turn holds it, ask that turn to stop
  (``publish_cancel``, asked again now and then in case the owner was re-subscribing) and
  wait for the lease, bounded; past the bound the session is busy.
- **keep**: renew while the turn runs; a lease that expired (the store restarted empty, or
  this process stalled) is taken back if nobody else took it, else the turn has **lost** it
  to a newer turn and must stop.
- **release**: on every exit path of the turn.

A lease whose owner died simply expires.
"""

from __future__ import annotations

import asyncio

from ..errors import SessionBusy
from .base import Store

POLL = 0.01
ASK_AGAIN = 0.25


class LeaseLost(Exception):
    """The turn lost its session lease: another turn of the session owns it now."""


class SessionLease:
    __slots__ = ("_renew_at", "held", "owner", "session_id", "store", "ttl")

    def __init__(self, store: Store, session_id: str, owner: str, ttl: float) -> None:
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self.ttl = ttl
        self.held = False
        self._renew_at = 0.0

    async def acquire(self, wait: float) -> None:
        """Take the lease, stopping another instance's turn of the session; ``SessionBusy``
        if it is still held after ``wait`` seconds."""
        store, sid = self.store, self.session_id
        loop = asyncio.get_running_loop()
        if not await store.acquire_lease(sid, self.owner, self.ttl):
            give_up = loop.time() + wait
            ask_again_at = loop.time()
            while True:
                if loop.time() >= give_up:
                    raise SessionBusy(f"session {sid} is still running a turn elsewhere")
                if loop.time() >= ask_again_at:
                    await store.publish_cancel(sid, None)
                    ask_again_at = loop.time() + ASK_AGAIN
                # The lease lives in the shared store: nothing to await but a poll.
                await asyncio.sleep(POLL)
                if await store.acquire_lease(sid, self.owner, self.ttl):
                    break
        self.held = True
        self._renew_at = loop.time() + self.ttl / 3

    def due(self, now: float) -> bool:
        """True when the lease should be renewed (a third of its time to live has passed)."""
        return now >= self._renew_at

    async def keep(self, now: float) -> None:
        """Renew the lease; ``LeaseLost`` when a newer turn of the session owns it."""
        self._renew_at = now + self.ttl / 3
        store, sid = self.store, self.session_id
        if await store.renew_lease(sid, self.owner, self.ttl):
            return
        if await store.acquire_lease(sid, self.owner, self.ttl):
            return
        raise LeaseLost(f"turn {self.owner} lost the session lease to another turn")

    async def release(self) -> None:
        if self.held:
            self.held = False
            await self.store.release_lease(self.session_id, self.owner)


async def wait_released(store: Store, session_id: str, wait: float) -> bool:
    """Until nobody holds the session's lease (True), or ``wait`` seconds passed (False)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    while await store.lease_owner(session_id) is not None:
        if loop.time() >= give_up:
            return False
        await asyncio.sleep(POLL)
    return True
