"""The session lease: one turn at a time per session, across every instance sharing a store.

A turn runs only while it holds ``lease(session)`` in the store (owner = the turn id, with a
short expiry, ``CALLAGENT_LEASE_TTL``). The protocol, on top of the store's lease operations:

- **acquire**: take the lease; if another instance's turn holds it, ask that turn to stop
  (``publish_cancel``, asked again now and then in case the owner was re-subscribing) and
  wait for the lease, bounded. An owner that does not answer (its instance died) stops
  renewing, so its lease expires within the TTL and the new turn runs. A turn of this
  instance may also take over the lease of the turn it follows (``replaces``), whose release
  may still be on its way or may have been lost to a store stall.
- **keep**: one ``LeaseHeartbeat`` per instance renews every lease it holds, a few times per
  TTL, whatever the upstream is doing. A lease that expired (the store restarted empty, or
  the process stalled) is taken back if nobody else took it; otherwise its turn has **lost**
  it to a newer turn and is stopped. When the store cannot be reached for half a TTL, the
  session may soon be free for another instance: the turn **fails** (with the fallback).
- **release**: on every exit path of the turn, without making the next turn wait for it.

A crashed instance so costs its calls about one TTL, not a transfer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..errors import CallagentError, SessionBusy
from .base import Store
from .local import ProcessLocalLeases

log = structlog.get_logger(component="callagent.lease")

POLL = 0.01
ASK_AGAIN = 0.25
BEATS_PER_TTL = 3
PRUNE_AT = 4096


class SessionLease:
    __slots__ = ("held", "owner", "session_id", "store", "ttl")

    def __init__(self, store: Store, session_id: str, owner: str, ttl: float) -> None:
        self.store = store
        self.session_id = session_id
        self.owner = owner
        self.ttl = ttl
        self.held = False

    async def acquire(self, wait: float, replaces: str | None = None) -> None:
        """Take the lease (or over from ``replaces``), stopping another instance's turn of the
        session; ``SessionBusy`` if it is still held after ``wait`` seconds."""
        store, sid = self.store, self.session_id
        loop = asyncio.get_running_loop()
        if not await store.acquire_lease(sid, self.owner, self.ttl, replaces):
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
                if await store.acquire_lease(sid, self.owner, self.ttl, replaces):
                    break
        self.held = True

    async def release(self) -> bool:
        """Give the lease back; False if the store could not be told (it then expires)."""
        if not self.held:
            return True
        self.held = False
        return await self.store.release_lease(self.session_id, self.owner)


@dataclass(slots=True)
class _Held:
    lost: Callable[[], None]  # a newer turn owns the session
    failed: Callable[[CallagentError], None]  # the store could not be reached for half a TTL
    renewed_at: float


class LeaseHeartbeat:
    """Renews every lease this instance holds, ``BEATS_PER_TTL`` times per TTL, in one store
    round trip, and tells a lease's turn when it lost the lease or could not keep it."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._held: dict[SessionLease, _Held] = {}

    def add(self, lease: SessionLease, lost: Callable[[], None], failed: Callable[[CallagentError], None]) -> None:
        self._held[lease] = _Held(lost, failed, asyncio.get_running_loop().time())

    def discard(self, lease: SessionLease) -> None:
        self._held.pop(lease, None)

    async def run(self) -> None:
        interval = self.ttl / BEATS_PER_TTL
        while True:
            await asyncio.sleep(interval)  # a periodic beat, not a wait for something
            try:
                async with asyncio.timeout(interval):
                    await self.beat()
            except (CallagentError, TimeoutError) as e:
                error = e if isinstance(e, CallagentError) else CallagentError("the session store did not answer")
                log.warning("lease_heartbeat_failed", leases=len(self._held), error=error.msg)
                self._give_up(error)

    def _give_up(self, error: CallagentError) -> None:
        """Stop the turns whose lease went unrenewed for half a TTL: it may expire any moment."""
        now = asyncio.get_running_loop().time()
        for lease, held in list(self._held.items()):
            if now - held.renewed_at >= self.ttl / 2:
                del self._held[lease]
                held.failed(error)

    async def beat(self) -> None:
        leases = [lease for lease in self._held if lease.held]
        if not leases:
            return
        now = asyncio.get_running_loop().time()
        renewed = await self.store.renew_leases([(x.session_id, x.owner) for x in leases], self.ttl)
        for lease, ok in zip(leases, renewed, strict=True):
            # Expired without a new owner (store restart, a stalled process): take it back.
            if ok or await self.store.acquire_lease(lease.session_id, lease.owner, self.ttl):
                if lease in self._held:
                    self._held[lease].renewed_at = now
                continue
            held = self._held.pop(lease, None)
            if held is not None and lease.held:
                held.lost()


class InstanceLeases:
    """The leases of one instance: taking them for its turns, the heartbeat that keeps them,
    and giving them back without holding up the session's next turn.

    A session whose last turn here has not (yet) given its lease back is remembered, with the
    time until which that could matter: the session's next turn here takes that lease over.
    """

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._heartbeat = LeaseHeartbeat(store, ttl)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._releasing: dict[str, tuple[str, float]] = {}  # session -> (turn id, until)
        self._releases: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        self._heartbeat_task = asyncio.create_task(self._heartbeat.run(), name="lease-heartbeat")

    async def close(self) -> None:
        if self._releases:
            await asyncio.wait(list(self._releases))
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
            self._heartbeat_task = None

    @property
    def pending(self) -> int:
        """Releases still on their way to the store."""
        return len(self._releases)

    async def take(
        self,
        session_id: str,
        owner: str,
        *,
        wait: float,
        after: str | None,
        lost: Callable[[], None],
        failed: Callable[[CallagentError], None],
    ) -> SessionLease:
        """The session's lease for turn ``owner``, kept by the heartbeat until ``give_back``.
        ``after``: the turn of this instance it follows, if one was running. It waits at least
        until the lease of an owner that died has expired."""
        lease = SessionLease(self.store, session_id, owner, self.ttl)
        await lease.acquire(wait=max(wait, self.ttl + 1), replaces=after or self._released_late(session_id))
        self._heartbeat.add(lease, lost, failed)
        return lease

    def give_back(self, lease: SessionLease) -> None:
        """Release in the background: the session's next turn takes the lease over meanwhile.
        A lease of this process's own store goes at once: there is nothing to wait for."""
        if not lease.held:
            return
        self._heartbeat.discard(lease)
        if isinstance(self.store, ProcessLocalLeases):
            lease.held = False
            self.store.release_lease_now(lease.session_id, lease.owner)
            return
        now = asyncio.get_running_loop().time()
        if len(self._releasing) >= PRUNE_AT:  # releases lost in a long store outage: forget old ones
            self._releasing = {sid: held for sid, held in self._releasing.items() if held[1] > now}
        self._releasing[lease.session_id] = (lease.owner, now + self.ttl)
        task = asyncio.create_task(self._release(lease), name=f"release-lease-{lease.owner}")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, lease: SessionLease) -> None:
        if await lease.release() and self._releasing.get(lease.session_id, ("",))[0] == lease.owner:
            del self._releasing[lease.session_id]

    def _released_late(self, session_id: str) -> str | None:
        """The turn of this instance whose lease may still be held for the session."""
        releasing = self._releasing.pop(session_id, None)
        if releasing is None or releasing[1] < asyncio.get_running_loop().time():
            return None
        return releasing[0]


async def wait_released(store: Store, session_id: str, wait: float) -> bool:
    """Until nobody holds the session's lease (True), or ``wait`` seconds passed (False)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait
    while await store.lease_owner(session_id) is not None:
        if loop.time() >= give_up:
            return False
        await asyncio.sleep(POLL)
    return True
