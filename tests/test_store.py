"""The session store contract, one suite run against every implementation (memory, SQLite, Redis),
then what only the shared Redis store does: cancels between processes, expiry, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from callagent.errors import StoreUnavailable
from callagent.store import Store, TurnRecord, create_store, memory

from .redis_server import RedisServer, free_port

CANCEL_BOUND = 0.1  # seconds from publish_cancel to the other process's callback


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return "memory://"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = create_store(store_url)
    await store.open()
    yield store
    await store.close()


def record(turn_id: str, session_id: str = "s1", **fields: Any) -> TurnRecord:
    return TurnRecord(session_id=session_id, turn_id=turn_id, caller_text=f"caller {turn_id}", **fields)


async def eventually(check: Any, deadline: float = 3.0) -> float:
    """Poll the async ``check()`` until it is true; return how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        assert loop.time() - start < deadline, f"not true within {deadline}s"
        await asyncio.sleep(0.01)
    return loop.time() - start


# -- the contract, for every store ---------------------------------------------------------


async def test_unknown_session_is_empty(store: Store) -> None:
    await store.ping()
    assert not await store.session_exists("nobody")
    assert await store.get_variables("nobody") == {}
    assert await store.turns("nobody") == []
    assert await store.last_turn("nobody") is None
    assert await store.lease_owner("nobody") is None


async def test_variables_merge_and_keep_their_types(store: Store) -> None:
    values = {"hphm1": "沪A8939", "count": 2, "ratio": 0.5, "injured": False, "none": None, "cars": ["a", {"b": 1}]}
    await store.set_variables("s1", values)
    assert await store.session_exists("s1")
    await store.set_variables("s1", {"count": 3, "place": "延安路"})
    got = await store.get_variables("s1")
    assert got == values | {"count": 3, "place": "延安路"}
    got["count"] = 99  # a copy: changing it changes nothing stored
    assert (await store.get_variables("s1"))["count"] == 3


async def test_transcript_is_ordered_and_saved_by_turn_id(store: Store) -> None:
    first = record("t1", received_at=1.5, timings={"total_ms": 12.5, "first_text_ms": None})
    await store.save_turn(first)
    assert await store.session_exists("s1")
    await store.save_turn(record("t2"))
    await store.save_turn(record("t3"))
    # Saving a known turn id replaces its row and keeps its place.
    first.reply_text, first.status, first.stage_codes = "您好", "completed", ["1002"]
    first.variables_before = {"hphm1": None}
    await store.save_turn(first)
    turns = await store.turns("s1")
    assert [t.turn_id for t in turns] == ["t1", "t2", "t3"]
    assert turns[0] == first
    assert (await store.last_turn("s1")) == record("t3")


async def test_last_turn_skips_rows_marked_deleted(store: Store) -> None:
    for turn_id in ("t1", "t2", "t3"):
        await store.save_turn(record(turn_id))
    await store.save_turn(record("t3", deleted=True))
    await store.save_turn(record("t2", deleted=True))
    last = await store.last_turn("s1")
    assert last is not None and last.turn_id == "t1"
    await store.save_turn(record("t1", deleted=True))
    assert await store.last_turn("s1") is None
    assert len(await store.turns("s1")) == 3


async def test_sessions_share_nothing(store: Store) -> None:
    await store.set_variables("s1", {"k": "one"})
    await store.save_turn(record("t1", session_id="s1"))
    await store.set_variables("s2", {"k": "two"})
    assert await store.get_variables("s2") == {"k": "two"}
    assert await store.turns("s2") == []
    await store.delete_session("s2")
    assert await store.get_variables("s1") == {"k": "one"}


async def test_delete_session_forgets_variables_and_transcript(store: Store) -> None:
    await store.set_variables("s1", {"k": "v"})
    await store.save_turn(record("t1"))
    await store.delete_session("s1")
    assert not await store.session_exists("s1")
    assert await store.get_variables("s1") == {}
    assert await store.turns("s1") == []
    assert await store.last_turn("s1") is None
    await store.delete_session("s1")  # deleting an unknown session is fine


async def test_lease_has_one_owner_at_a_time(store: Store) -> None:
    assert await store.acquire_lease("s1", "turn-a", 30)
    assert await store.lease_owner("s1") == "turn-a"
    assert not await store.acquire_lease("s1", "turn-b", 30)
    assert await store.acquire_lease("s1", "turn-a", 30), "the owner may take its own lease again"
    assert await store.renew_lease("s1", "turn-a", 30)
    assert not await store.renew_lease("s1", "turn-b", 30)
    await store.release_lease("s1", "turn-b")  # not the owner: nothing happens
    assert await store.lease_owner("s1") == "turn-a"
    await store.release_lease("s1", "turn-a")
    assert await store.lease_owner("s1") is None
    assert await store.acquire_lease("s1", "turn-b", 30)
    assert await store.acquire_lease("s2", "turn-c", 30), "leases are per session"


async def test_concurrent_acquires_have_one_winner(store: Store) -> None:
    won = await asyncio.gather(*(store.acquire_lease("s1", f"turn-{n}", 30) for n in range(20)))
    assert sum(won) == 1
    assert await store.lease_owner("s1") == f"turn-{won.index(True)}"


async def test_lease_of_a_dead_owner_expires(store: Store) -> None:
    assert await store.acquire_lease("s1", "dead", 0.2)
    took = await eventually(lambda: store.acquire_lease("s1", "next", 30))
    assert 0.1 < took < 1.0
    assert await store.lease_owner("s1") == "next"
    assert not await store.renew_lease("s1", "dead", 30)


async def test_a_turn_takes_over_the_lease_of_the_turn_it_follows(store: Store) -> None:
    """A lost release (a store stall) never blocks the session's next turn on the same instance."""
    assert await store.acquire_lease("s1", "before", 30)
    assert not await store.acquire_lease("s1", "next", 30, replaces="someone-else")
    assert await store.acquire_lease("s1", "next", 30, replaces="before")
    assert await store.lease_owner("s1") == "next"
    assert await store.release_lease("s1", "before") is True  # late: changes nothing
    assert await store.lease_owner("s1") == "next"


async def test_many_leases_are_renewed_in_one_call(store: Store) -> None:
    assert await store.acquire_lease("s1", "turn-a", 0.3)
    assert await store.acquire_lease("s2", "turn-b", 0.3)
    assert await store.renew_leases([("s1", "turn-a"), ("s2", "not-the-owner"), ("s3", "nobody")], 30) == [
        True,
        False,
        False,
    ]
    assert await store.renew_leases([], 30) == []


async def test_renewing_keeps_the_lease(store: Store) -> None:
    assert await store.acquire_lease("s1", "turn-a", 0.2)
    assert await store.renew_lease("s1", "turn-a", 30)
    await asyncio.sleep(0.3)  # past the first expiry: nothing to wait for, time must pass
    assert await store.lease_owner("s1") == "turn-a"
    assert not await store.acquire_lease("s1", "turn-b", 30)


async def test_a_cancelled_lease_call_leaves_no_lease_behind(store: Store) -> None:
    """Turns are cancelled at any await, their lease calls included (barge-in, a gateway leaving)."""
    acquire = asyncio.create_task(store.acquire_lease("s1", "turn-a", 30))
    await asyncio.sleep(0)  # under way
    acquire.cancel()
    await asyncio.wait([acquire])
    if not acquire.cancelled():  # it finished first: the caller knows it holds the lease
        assert acquire.result()
        await store.release_lease("s1", "turn-a")
    # Otherwise the caller never learnt whether it got the lease, and will not release it.
    await eventually(lambda: store.acquire_lease("s1", "turn-b", 30))
    release = asyncio.create_task(store.release_lease("s1", "turn-b"))
    await asyncio.sleep(0)
    release.cancel()
    await asyncio.wait([release])
    await eventually(lambda: store.acquire_lease("s1", "turn-c", 30))


async def test_publishing_a_cancel_nobody_hears_is_harmless(store: Store) -> None:
    heard: list[tuple[str, str | None]] = []
    store.on_cancel(lambda session_id, spoken, turn_id: heard.append((session_id, spoken)))
    await store.publish_cancel("s1", "您好")
    await store.ping()
    assert heard == [], "a process does not cancel itself through the store"


# -- memory: bounded -------------------------------------------------------------------------


async def test_memory_store_forgets_the_least_recently_written_session_and_old_turns() -> None:
    store = create_store("memory://")
    await store.set_variables("first", {"k": 1})
    await store.save_turn(record("t0", session_id="busy"))
    for i in range(memory.MAX_SESSIONS - 2):
        await store.save_turn(record("t0", session_id=f"s{i}"))
    await store.set_variables("first", {"k": 2})  # written again: now the most recent
    await store.save_turn(record("t0", session_id="new"))  # one session too many
    assert not await store.session_exists("busy") and await store.turns("busy") == []
    assert await store.get_variables("first") == {"k": 2}
    assert await store.session_exists("new") and await store.session_exists("s0")
    for i in range(1, memory.MAX_TURNS + 2):
        await store.save_turn(record(f"t{i}", session_id="new"))
    turns = [r.turn_id for r in await store.turns("new")]
    assert len(turns) == memory.MAX_TURNS and turns[0] == "t2" and turns[-1] == f"t{memory.MAX_TURNS + 1}"


# -- Redis: several processes, expiry, outages ------------------------------------------------


@pytest.fixture
async def two_processes(redis_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one Redis, as two callagent processes have, both listening for cancels."""
    a, b = create_store(redis_url), create_store(redis_url)
    await a.open()
    await b.open()
    try:
        await eventually(lambda: ready(a))
        await eventually(lambda: ready(b))
        yield a, b
    finally:
        await a.close()
        await b.close()


async def ready(store: Store) -> bool:
    try:
        await store.ping()
    except StoreUnavailable:
        return False
    return True


class Heard:
    """Cancels received by one process, with an event for the test to wait on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None, float]] = []
        self.event = asyncio.Event()

    def __call__(self, session_id: str, spoken_text: str | None, turn_id: str | None) -> None:
        self.calls.append((session_id, spoken_text, turn_id, time.perf_counter()))
        self.event.set()

    async def next(self) -> tuple[str, str | None, str | None, float]:
        async with asyncio.timeout(2):
            await self.event.wait()
        self.event.clear()
        return self.calls[-1]


async def test_cancel_reaches_the_other_process_fast(two_processes: tuple[Store, Store]) -> None:
    a, b = two_processes
    heard_a, heard_b = Heard(), Heard()
    a.on_cancel(heard_a)
    b.on_cancel(heard_b)

    def broken(session_id: str, spoken_text: str | None, turn_id: str | None) -> None:
        raise RuntimeError("a failing callback must not stop the others")

    b.on_cancel(broken)
    b.on_cancel(second := Heard())
    latencies = []
    with capture_logs() as logs:
        for n in range(20):
            sent = time.perf_counter()
            await a.publish_cancel(f"s{n}", "您好，请问" if n % 2 else None, f"t{n}" if n % 3 else None)
            session_id, spoken, turn_id, at = await heard_b.next()
            latencies.append(at - sent)
            assert (session_id, spoken) == (f"s{n}", "您好，请问" if n % 2 else None)
            assert turn_id == (f"t{n}" if n % 3 else None)
    assert len(second.calls) == 20
    assert [e["event"] for e in logs].count("cancel_callback_failed") == 20
    assert heard_a.calls == [], "the sender does not hear its own cancel"
    assert max(latencies) < CANCEL_BOUND, latencies


async def test_session_exists_while_its_first_turn_holds_the_lease(redis_url: str) -> None:
    store = create_store(redis_url)
    await store.open()
    try:
        await store.acquire_lease("s1", "turn-a", 30)
        assert await store.session_exists("s1"), "a running first turn can be cancelled from another process"
    finally:
        await store.close()


async def test_session_expires_transcript_ttl_after_its_last_write(redis_url: str) -> None:
    store = create_store(redis_url, transcript_ttl=1)
    await store.open()
    try:
        await store.set_variables("s1", {"k": "v"})
        await store.save_turn(record("t1"))
        took = await eventually(lambda: gone(store, "s1"))
        assert 0.5 < took < 3.0
        assert await store.turns("s1") == [] and await store.get_variables("s1") == {}
    finally:
        await store.close()


async def gone(store: Store, session_id: str) -> bool:
    return not await store.session_exists(session_id)


async def test_without_redis_every_call_fails_fast_and_clearly() -> None:
    port = free_port()  # nothing listens there
    store = create_store(f"redis://127.0.0.1:{port}/0")
    await store.open()
    try:
        calls = [
            store.ping(),
            store.session_exists("s1"),
            store.get_variables("s1"),
            store.set_variables("s1", {"k": "v"}),
            store.save_turn(record("t1")),
            store.turns("s1"),
            store.last_turn("s1"),
            store.delete_session("s1"),
            store.acquire_lease("s1", "t1", 10),
            store.renew_lease("s1", "t1", 10),
            store.lease_owner("s1"),
            store.publish_cancel("s1", None),
        ]
        for call in calls:
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable, match=f"Redis at 127.0.0.1:{port}/0.* unavailable"):
                await call
            assert time.perf_counter() - started < 0.5
        await store.release_lease("s1", "t1")  # runs in a turn's `finally`: never raises
    finally:
        await store.close()
    assert f":{port}" in repr(store) and "redis://" not in repr(store)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server this test may stop and start again on the same port."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_redis_restart_heals_requests_and_cancels(own_redis: RedisServer) -> None:
    a, b = create_store(own_redis.url), create_store(own_redis.url)
    await a.open()
    await b.open()
    heard = Heard()
    b.on_cancel(heard)
    try:
        await eventually(lambda: ready(b))
        await a.set_variables("s1", {"k": "v"})
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await a.get_variables("s1")
        with pytest.raises(StoreUnavailable):
            await b.ping()
        own_redis.start()  # empty again: no persistence
        await eventually(lambda: ready(a))
        await eventually(lambda: ready(b))
        await a.set_variables("s1", {"k": "again"})
        assert await b.get_variables("s1") == {"k": "again"}
        await a.publish_cancel("s1", None)
        assert (await heard.next())[:2] == ("s1", None)
    finally:
        await a.close()
        await b.close()
