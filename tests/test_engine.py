"""The turn engine and its reply pipeline on their own, with the in-memory store.

The upstreams here are small implementations of the ``Upstream`` protocol that fail the way a
buggy upstream or a broken store would; the engine's safety nets must still end every turn
with exactly one terminal event and give back everything it held.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from structlog.testing import capture_logs

from callagent.errors import CallagentError
from callagent.events import Done, Error, Event, StageCode, TextDelta
from callagent.pipeline import ReplyPipeline, TurnDeadline
from callagent.segment import SegmentOptions
from callagent.settings import Settings
from callagent.stages import StageTable
from callagent.store import MemoryStore, TurnRecord
from callagent.turns import TurnEngine, TurnRequest
from callagent.upstream.base import UpstreamChunk, UpstreamTurn


class ScriptedUpstream:
    """Yields its pieces, then raises ``error`` if given."""

    name = "scripted"
    history_turns = 0

    def __init__(self, pieces: list[str], error: BaseException | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.closed = asyncio.Event()

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        try:
            for piece in self.pieces:
                yield piece
            if self.error is not None:
                raise self.error
        finally:
            self.closed.set()

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        return None

    async def delete_session(self, session_id: str) -> None:
        return None

    async def check_ready(self) -> None:
        return None


class UnsavableStore(MemoryStore):
    """A store whose transcript writes fail with an error that is not callagent's own."""

    async def save_turn(self, record: TurnRecord) -> None:
        raise OSError("disk went away")


async def run_turn(engine: TurnEngine, text: str = "喂") -> list[Event]:
    async with engine.turn(TurnRequest("s1", text)) as turn:
        return [event async for event in turn.events()]


async def _until_idle(engine: TurnEngine) -> None:
    while engine._tasks:
        await asyncio.wait(list(engine._tasks))
        await asyncio.sleep(0)  # the tasks' done callbacks


async def engine_with(upstream: Any, store: MemoryStore | None = None, **settings: Any) -> TurnEngine:
    store = store or MemoryStore()
    await store.open()
    return TurnEngine(Settings(store="memory://", **settings), store, upstream, StageTable.load())


async def test_a_crashing_upstream_ends_with_the_fallback_and_one_internal_error() -> None:
    upstream = ScriptedUpstream(["<state>1002</state>您好"], RuntimeError("bug"))
    engine = await engine_with(upstream)
    with capture_logs() as logs:
        events = await run_turn(engine)
    assert events[0] == StageCode("1002", "通话中")
    assert events[1] == TextDelta("您好")
    assert isinstance(events[2], StageCode) and events[2].code == "0001"  # the fallback stage
    assert events[3] == TextDelta(engine.settings.fallback_text)
    assert isinstance(events[-1], Error) and events[-1].type == "internal_error"
    assert len(events) == 5
    assert any(entry["event"] == "turn_crashed" for entry in logs)
    assert upstream.closed.is_set()
    await asyncio.wait_for(_until_idle(engine), 5)
    assert engine.running("s1") is None
    assert await engine.store.lease_owner("s1") is None
    record = await engine.store.last_turn("s1")
    assert record is not None and record.status == "failed" and record.error_type == "internal_error"


async def test_a_transcript_that_cannot_be_saved_still_ends_the_turn_once() -> None:
    engine = await engine_with(ScriptedUpstream(["<state>1002</state>您好"]), UnsavableStore())
    with capture_logs() as logs:
        events = await run_turn(engine)
    terminal = [e for e in events if isinstance(e, Done | Error)]
    assert len(terminal) == 1 and isinstance(terminal[0], Error) and terminal[0].type == "internal_error"
    assert any(entry["event"] == "turn_finish_failed" for entry in logs)
    await asyncio.wait_for(_until_idle(engine), 5)
    assert await engine.store.lease_owner("s1") is None


async def test_an_upstream_error_is_the_error_object_itself() -> None:
    failure = CallagentError("store on fire")
    engine = await engine_with(ScriptedUpstream([], failure))
    events = await run_turn(engine)
    assert isinstance(events[-1], Error) and events[-1].error is failure


@pytest.mark.parametrize("fallback", [True, False])
async def test_a_terminal_stage_already_sent_suppresses_the_fallback(fallback: bool) -> None:
    engine = await engine_with(ScriptedUpstream(["<state>0002</state>再见"], RuntimeError()), fallback_enabled=fallback)
    events = await run_turn(engine)
    assert [e.code for e in events if isinstance(e, StageCode)] == ["0002"]


async def test_pipeline_strips_tags_and_cuts_clauses_with_a_flush_timer() -> None:
    events: list[Event] = []
    pipeline = ReplyPipeline(events.append, StageTable.load(), SegmentOptions(min_chars=2, flush_delay=0.01))
    pipeline.feed("<state>10")
    pipeline.feed("02</state>您好，这里是")
    assert events == [StageCode("1002", "通话中"), TextDelta("您好，")]
    while len(events) < 3:  # the held-back clause is spoken when the flush timer fires
        await asyncio.sleep(0.005)
    assert events[2] == TextDelta("这里是")
    pipeline.feed("交警队。")
    pipeline.finish()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "您好，这里是交警队。"
    assert pipeline.stage == "1002" and pipeline.first_text is not None


async def test_deadline_says_which_deadline_fired() -> None:
    deadline = TurnDeadline(first_token=10, idle=15, turn=120, expired=lambda _: None)
    deadline.start(100.0)
    assert deadline.when() == 110.0
    deadline.stop()
    assert deadline.explain(110, first_byte=False, first_text=False).startswith("no answer")
    assert deadline.explain(110, first_byte=True, first_text=False).startswith("no text")
    assert deadline.explain(130, first_byte=True, first_text=True).startswith("the upstream went silent")
    assert deadline.explain(220, first_byte=True, first_text=True).startswith("the turn took longer")


async def test_deadline_is_one_timer_moved_by_text() -> None:
    fired: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = TurnDeadline(first_token=0.05, idle=0.2, turn=10, expired=lambda d: fired.append(loop.time()))
    started = loop.time()
    deadline.start(started)
    deadline.alive(started + 0.01)  # text flows: the idle deadline replaces the first-token one
    assert deadline.when() == pytest.approx(started + 0.21)
    await asyncio.sleep(0.1)
    assert not fired  # the first-token deadline no longer holds
    deadline.alive(started + 0.1)  # more text: only noted, the timer waits again when it comes due
    assert deadline.when() == pytest.approx(started + 0.3)
    while not fired:
        await asyncio.sleep(0.01)
    assert deadline.fired and fired[0] >= started + 0.3
    deadline.reschedule(loop.time() + 0.01)  # reused (the drain): armed again, not fired yet
    assert not deadline.fired
    deadline.stop()
    await asyncio.sleep(0.03)
    assert len(fired) == 1 and deadline.when() is None


class PacedUpstream(ScriptedUpstream):
    """Waits ``delay`` before each piece, as a streaming model does."""

    def __init__(self, pieces: list[str], delay: float) -> None:
        super().__init__(pieces)
        self.delay = delay

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        for piece in self.pieces:
            await asyncio.sleep(self.delay)
            yield piece


REPLY = ["<state>1002</state>您好", "，这里是", "交警队。"]
EXPECTED = [StageCode("1002", "通话中"), TextDelta("您好"), TextDelta("，这里是"), TextDelta("交警队。")]


async def test_delivery_writes_the_reply_from_the_turn_task_and_its_end_from_the_consumer() -> None:
    engine = await engine_with(PacedUpstream(REPLY, delay=0.01))
    written: list[tuple[Event, asyncio.Task[Any] | None]] = []

    async def write(event: Event) -> None:
        written.append((event, asyncio.current_task()))

    async with engine.turn(TurnRequest("s1", "喂")) as turn:
        await turn.deliver(write)
    assert [event for event, _ in written[:-1]] == EXPECTED
    assert isinstance(written[-1][0], Done) and written[-1][0].status == "completed"
    # No task switch per event: the turn's own task wrote the reply; the consumer only its end.
    assert {task for _, task in written[:-1]} == {turn.task}
    assert written[-1][1] is not turn.task


async def test_delivery_keeps_the_order_when_the_consumer_writes_slower_than_the_turn_produces() -> None:
    pieces = ["<state>1002</state>", *"您好，这里是交通事故快处中心，请问现场有人受伤吗？"]
    engine = await engine_with(PacedUpstream(pieces, delay=0.001))
    written: list[Event] = []

    async def write(event: Event) -> None:
        await asyncio.sleep(0.004)  # a gateway that reads slowly: the writer waits
        written.append(event)

    async with engine.turn(TurnRequest("s1", "喂")) as turn:
        await turn.deliver(write)
    assert written[0] == StageCode("1002", "通话中")
    assert "".join(e.text for e in written if isinstance(e, TextDelta)) == "".join(pieces[1:])
    assert isinstance(written[-1], Done) and sum(isinstance(e, Done | Error) for e in written) == 1


async def test_a_write_that_fails_in_the_turn_task_is_raised_to_the_consumer() -> None:
    engine = await engine_with(PacedUpstream(REPLY, delay=0.01))

    async def write(event: Event) -> None:
        if isinstance(event, TextDelta):
            raise ConnectionResetError("the gateway went away")

    with pytest.raises(ConnectionResetError):
        async with engine.turn(TurnRequest("s1", "喂")) as turn:
            await turn.deliver(write)
    await asyncio.wait_for(_until_idle(engine), 5)  # leaving the block cancelled the turn
    record = await engine.store.last_turn("s1")
    assert record is not None and record.status == "cancelled"
    assert await engine.store.lease_owner("s1") is None


async def test_a_clause_flushed_by_its_timer_is_written_by_the_consumer() -> None:
    segment = SegmentOptions(flush_delay=0.01)
    engine = await engine_with(PacedUpstream(["<state>1002</state>您好，这里是", "交警队。"], delay=0.1))
    written: list[tuple[Event, asyncio.Task[Any] | None]] = []

    async def write(event: Event) -> None:
        written.append((event, asyncio.current_task()))

    async with engine.turn(TurnRequest("s1", "喂", segment=segment)) as turn:
        await turn.deliver(write)
    texts = [(e.text, task) for e, task in written if isinstance(e, TextDelta)]
    assert [text for text, _ in texts] == ["您好，这里是", "交警队。"]
    assert texts[0][1] is not turn.task  # flushed by the timer while the upstream was quiet
    assert written[0] == (StageCode("1002", "通话中"), turn.task)  # produced with the upstream's piece
