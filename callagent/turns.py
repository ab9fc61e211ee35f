"""The turn engine: one road from a caller utterance to the events every transport encodes.

::

    TurnEngine.start(TurnRequest) -> Turn          (cancels the session's running turn first)
        turn task: wait for the session lease -> load variables -> upstream.stream()
                   -> StateTagParser (-> ClauseSegmenter) -> events -> transcript row
    Turn.events()  -> StageCode | TextDelta ... then exactly one Done or Error

Every turn runs in its own task, owned by the engine, so anything can stop it: a barge-in
on another socket, ``POST /cancel``, a new turn for the session on another instance (through
the store), the gateway disconnecting, shutdown. Cancelling the task unwinds the upstream
read, which closes the upstream HTTP response at once; the task then records the transcript,
emits ``Done(cancelled)`` and releases the session lease. The consumer stops forwarding
anything but the terminal event the moment it asks for the cancel, so no stale delta of
the old turn reaches the gateway.

Deadlines (connect, first token, idle gap, whole turn) are held by one ``asyncio.timeout``
that is rescheduled on every upstream chunk. An upstream failure still gives the caller
the fallback phrase and the gateway the fallback stage before the ``Error`` event.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import structlog

from .errors import CallagentError, SessionBusy, UpstreamTimeout
from .events import TERMINAL, Done, Error, Event, StageCode, TextDelta
from .metrics import Metrics
from .segment import ClauseSegmenter, SegmentOptions
from .settings import Settings
from .stages import StageTable
from .store import Store, TurnRecord
from .tags import StageTag, StateTagParser
from .upstream.base import END_OF_SPEECH, Upstream, UpstreamChunk, UpstreamTurn, VariablesUpdate

log = structlog.get_logger("callagent.turns")

DRAIN_TIMEOUT = 5.0
"""How long a finished turn keeps reading the upstream for its end-of-stream bookkeeping."""
DRAIN_WAIT = 2.0
"""How much longer that reading may go on once a new turn of the session waits for it."""

LEASE_POLL = 0.01
LEASE_ASK_AGAIN = 0.25


class Superseded(Exception):
    """The turn lost its session lease: another turn of the session owns it now."""


@dataclass(slots=True)
class TurnRequest:
    session_id: str
    text: str
    time_stamp: str = ""
    transport: str = "http"
    turn_id: str | None = None
    segment: SegmentOptions | None = None


class Turn:
    """A running turn: its id, its events, and the handle to stop it."""

    def __init__(self, request: TurnRequest, turn_id: str) -> None:
        self.id = turn_id
        self.request = request
        self.session_id = request.session_id
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.spoken_text: str | None = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        # "running": cancelling interrupts the task. "finishing": the reply is being recorded
        # and its terminal event sent; a cancel only stops what follows. "draining": the
        # caller has the whole reply; a cancel lets the upstream's bookkeeping finish, bounded.
        self.phase = "running"
        self.ended = False  # the terminal event was emitted
        self._drain_deadline: asyncio.Timeout | None = None

    def __repr__(self) -> str:
        return f"Turn({self.id!r}, session={self.session_id!r})"

    def emit(self, event: Event) -> None:
        if isinstance(event, TERMINAL):
            self.ended = True
        self._queue.put_nowait(event)

    def cancel(self, spoken_text: str | None = None) -> bool:
        """Stop the turn now; ``spoken_text`` is what the caller heard of it.

        False if the reply was already complete (or the turn already cancelled).
        """
        if self.cancel_requested or self.task is None or self.task.done():
            return False
        self.cancel_requested = True
        if self.phase == "running":
            self.spoken_text = spoken_text
            self.task.cancel()
            return True
        if self._drain_deadline is not None:
            # The upstream is still saving the reply (FastGPT: until [DONE]); whoever waits for this
            # turn (the session's next turn) must not race that save: let it go on, DRAIN_WAIT at most.
            when, wait_until = self._drain_deadline.when(), asyncio.get_running_loop().time() + DRAIN_WAIT
            self._drain_deadline.reschedule(wait_until if when is None else min(when, wait_until))
        return False

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def events(self) -> AsyncIterator[Event]:
        """The turn's events up to and including its terminal one."""
        while True:
            event = await self._queue.get()
            if isinstance(event, TERMINAL):
                yield event
                return
            if not self.cancel_requested:
                yield event

    async def wait(self) -> None:
        """Until the turn task has ended (transcript saved, lease released)."""
        if self.task is not None:
            await asyncio.wait([self.task])


@dataclass(slots=True)
class _Progress:
    """What a turn has produced so far, and when."""

    started: float  # loop time: the deadlines are loop times
    deadline: float
    clock_start: float = field(default_factory=perf_counter)  # the latency figures use a fine clock
    text: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    terminal_stage: bool = False
    variables: dict[str, Any] = field(default_factory=dict)
    first_byte: float | None = None
    first_text: float | None = None
    first_stage: float | None = None
    chunks: AsyncGenerator[UpstreamChunk, None] | None = None  # the upstream reply, once asked for
    leased: bool = False

    @property
    def stage(self) -> str | None:
        """The stage code reported last: the one that wins."""
        return self.stages[-1] if self.stages else None


class TurnEngine:
    def __init__(
        self, settings: Settings, store: Store, upstream: Upstream, stages: StageTable, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.stages = stages
        self.metrics = metrics or Metrics()
        self._running: dict[str, Turn] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lease_ttl = settings.connect_timeout + max(settings.first_token_timeout, settings.idle_timeout) + 5
        store.on_cancel(self._on_remote_cancel)

    # -- starting and stopping turns -------------------------------------------------------

    def start(self, request: TurnRequest) -> Turn:
        """Start a turn for the session, cancelling the one it is running (barge-in)."""
        turn = Turn(request, request.turn_id or new_turn_id())
        prior = self._running.get(request.session_id)
        if prior is not None:
            prior.cancel()
        self._running[request.session_id] = turn
        turn.task = asyncio.create_task(self._run(turn, prior), name=f"turn-{turn.id}")
        self._tasks.add(turn.task)
        turn.task.add_done_callback(self._tasks.discard)
        self.metrics.running_turns.inc()
        return turn

    @asynccontextmanager
    async def turn(self, request: TurnRequest) -> AsyncIterator[Turn]:
        """Start a turn for a consumer; leaving the block early (disconnect) cancels it.

        Leaving after the terminal event does not: the turn may still be reading the upstream's
        end-of-stream bookkeeping, which keeps the pooled upstream connection reusable.
        """
        turn = self.start(request)
        try:
            yield turn
        finally:
            if not turn.ended:
                turn.cancel()
                await asyncio.shield(turn.wait())

    async def cancel(self, session_id: str, spoken_text: str | None = None, turn_id: str | None = None) -> bool:
        """Stop the session's running turn (``turn_id``: only that one) here or on any instance
        sharing the store. True if a turn was running and is being stopped."""
        local = self.running(session_id)
        if local is not None:
            return (turn_id is None or local.id == turn_id) and local.cancel(spoken_text)
        owner = await self.store.lease_owner(session_id)  # the lease owner is the running turn
        if owner is None or (turn_id is not None and owner != turn_id):
            return False
        await self.store.publish_cancel(session_id, spoken_text, owner)
        return True

    async def session_known(self, session_id: str) -> bool:
        """True once the session has data, or while its first turn runs (here or elsewhere)."""
        return (
            self.running(session_id) is not None
            or await self.store.session_exists(session_id)
            or await self.store.lease_owner(session_id) is not None
        )

    async def delete_last_turn(self, session_id: str) -> str | None:
        """Delete the last turn's two upstream records and undo the variables it set."""
        record = await self.store.last_turn(session_id)
        if record is None:
            return None
        await self.upstream.delete_records(session_id, record.upstream_records)
        before = record.variables_before
        if before:
            await self.store.set_variables(session_id, {k: v for k, v in before.items() if v is not None})
            await self.store.delete_variables(session_id, [k for k, v in before.items() if v is None])
        record.deleted = True
        await self.store.save_turn(record)
        return record.turn_id

    async def delete_session(self, session_id: str) -> None:
        """Stop the session's turn, forget its conversation upstream and its data here."""
        turn = self.running(session_id)
        if turn is not None:
            turn.cancel()
            await turn.wait()
        elif await self.cancel(session_id):
            # A turn on another instance saves its transcript as it stops: let it, then delete.
            loop = asyncio.get_running_loop()
            give_up = loop.time() + self.settings.first_token_timeout
            # The lease lives in the shared store, not in this process: nothing to await but a poll.
            while await self.store.lease_owner(session_id) is not None and loop.time() < give_up:  # noqa: ASYNC110
                await asyncio.sleep(LEASE_POLL)
        await self.upstream.delete_session(session_id)
        await self.store.delete_session(session_id)

    async def record_spoken_text(self, session_id: str, spoken_text: str, turn_id: str | None = None) -> bool:
        """The caller barged in after the reply was generated: note what they actually heard."""
        record = await self.store.last_turn(session_id)
        if record is None or (turn_id is not None and record.turn_id != turn_id):
            return False
        record.spoken_text = spoken_text
        await self.store.save_turn(record)
        return True

    def running(self, session_id: str) -> Turn | None:
        turn = self._running.get(session_id)
        return turn if turn is not None and not turn.done else None

    def _on_remote_cancel(self, session_id: str, spoken_text: str | None, turn_id: str | None) -> None:
        turn = self._running.get(session_id)
        if turn is not None and (turn_id is None or turn.id == turn_id):
            turn.cancel(spoken_text)

    async def close(self, grace: float = 0.0) -> None:
        """Let running turns finish for up to ``grace`` seconds, then cancel the rest."""
        if self._tasks and grace > 0:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for turn in list(self._running.values()):
            turn.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    # -- one turn --------------------------------------------------------------------------

    async def _run(self, turn: Turn, prior: Turn | None) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        progress = _Progress(started=now, deadline=now + self.settings.turn_timeout)
        record = TurnRecord(
            session_id=turn.session_id,
            turn_id=turn.id,
            caller_text=turn.request.text,
            time_stamp=turn.request.time_stamp,
            transport=turn.request.transport,
            received_at=time.time(),
        )
        try:
            status, error = await self._converse(turn, prior, progress, record)
            # From here on nothing cancels this task (see Turn.cancel), so every step below runs.
            turn.phase = "finishing"
            chunks = progress.chunks
            if status != "completed" and chunks is not None:
                await chunks.aclose()  # usually already unwound by the cancel or the error
            await self._finish(turn, record, progress, status, error)
            if status == "completed" and chunks is not None and not turn.cancel_requested:
                turn.phase = "draining"
                await self._drain(turn, chunks)
        except Exception:
            log.exception("turn_finish_failed", session_id=turn.session_id, turn_id=turn.id)
        finally:
            if not turn.ended:  # whatever went wrong above, the consumer must not wait forever
                turn.emit(Error("internal_error", "internal error", "500"))
            await self._release(turn, progress)

    async def _converse(
        self, turn: Turn, prior: Turn | None, progress: _Progress, record: TurnRecord
    ) -> tuple[str, CallagentError | None]:
        """Wait for the session, run the upstream, relay its reply: (status, error)."""
        try:
            if prior is not None:
                await prior.wait()
            progress.leased = await self._acquire_lease(turn, progress)
            variables = await self.store.get_variables(turn.session_id)
            history: tuple[TurnRecord, ...] = ()
            if self.upstream.history_turns:
                rows = [r for r in await self.store.turns(turn.session_id) if not r.deleted and r.turn_id != turn.id]
                history = tuple(rows[-self.upstream.history_turns :])
            upstream_turn = UpstreamTurn(turn.session_id, turn.id, turn.request.text, variables, history)
            record.upstream_records = [upstream_turn.human_record_id, upstream_turn.ai_record_id]
            progress.chunks = self.upstream.stream(upstream_turn)
            await self._relay(turn, progress.chunks, progress, variables)
        except asyncio.CancelledError:
            # Only Turn.cancel() and engine shutdown cancel this task; both want Done(cancelled),
            # so the cancellation is consumed here and the rest of the turn runs normally.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return "cancelled", None
        except Superseded as e:
            log.warning("turn_superseded", session_id=turn.session_id, turn_id=turn.id, reason=str(e))
            return "cancelled", None
        except CallagentError as e:
            return "failed", e
        except Exception as e:
            log.exception("turn_crashed", session_id=turn.session_id, turn_id=turn.id)
            return "failed", CallagentError(f"internal error: {type(e).__name__}")
        return "completed", None

    async def _release(self, turn: Turn, progress: _Progress) -> None:
        """Give back what the turn holds: the upstream response, the session lease, its slot."""
        if self._running.get(turn.session_id) is turn:
            del self._running[turn.session_id]
        self.metrics.running_turns.dec()
        try:
            if progress.chunks is not None:
                await progress.chunks.aclose()
        except Exception:
            log.exception("upstream_close_failed", session_id=turn.session_id, turn_id=turn.id)
        if progress.leased:
            await self.store.release_lease(turn.session_id, turn.id)

    async def _acquire_lease(self, turn: Turn, progress: _Progress) -> bool:
        store, ttl = self.store, self._lease_ttl
        if await store.acquire_lease(turn.session_id, turn.id, ttl):
            return True
        # Another instance runs a turn of this session: ask it to stop (again now and then, in
        # case it was re-subscribing when the first request went out), then wait for the lease.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.first_token_timeout
        ask_again_at = loop.time()
        while loop.time() < give_up:
            if loop.time() >= ask_again_at:
                await store.publish_cancel(turn.session_id, None)
                ask_again_at = loop.time() + LEASE_ASK_AGAIN
            await asyncio.sleep(LEASE_POLL)
            if await store.acquire_lease(turn.session_id, turn.id, ttl):
                return True
        raise SessionBusy(f"session {turn.session_id} is still running a turn elsewhere")

    async def _relay(
        self, turn: Turn, chunks: AsyncGenerator[UpstreamChunk, None], progress: _Progress, variables: dict[str, Any]
    ) -> None:
        """Upstream chunks -> events, until the reply is complete."""
        s = self.settings
        loop = asyncio.get_running_loop()
        parser = StateTagParser()
        segment = turn.request.segment
        segmenter = ClauseSegmenter(segment) if segment else None
        first_token_at = progress.started + s.first_token_timeout
        scheduled = min(first_token_at, progress.deadline)
        slack = min(0.5, s.idle_timeout / 10)
        lease_renew_at = loop.time() + self._lease_ttl / 3
        flush_handle: asyncio.TimerHandle | None = None

        def emit_text(text: str) -> None:
            if not text:
                return
            if progress.first_text is None:
                progress.first_text = perf_counter()
            progress.text.append(text)
            turn.emit(TextDelta(text))

        def flush_segment() -> None:
            nonlocal flush_handle
            flush_handle = None
            assert segmenter is not None and segment is not None
            emit_text(segmenter.flush_pending())
            if segmenter.has_pending:
                flush_handle = loop.call_later(segment.flush_delay, flush_segment)

        def speak(text: str) -> None:
            nonlocal flush_handle
            if segmenter is None or segment is None:
                emit_text(text)
                return
            for clause in segmenter.feed(text):
                emit_text(clause)
            if segmenter.has_pending and flush_handle is None:
                flush_handle = loop.call_later(segment.flush_delay, flush_segment)

        try:
            async with asyncio.timeout_at(scheduled) as deadline:
                async for chunk in chunks:
                    now = loop.time()
                    if progress.first_byte is None:
                        progress.first_byte = perf_counter()
                    if isinstance(chunk, str):
                        for item in parser.feed(chunk):
                            if isinstance(item, StageTag):
                                self._stage(turn, progress, item)
                            else:
                                speak(item)
                    elif chunk is END_OF_SPEECH:
                        break
                    elif isinstance(chunk, VariablesUpdate):
                        for key, value in chunk.items():
                            if variables.get(key) != value:
                                progress.variables[key] = value
                    if (
                        progress.first_text is not None
                        and scheduled < progress.deadline
                        and now + s.idle_timeout - scheduled > slack
                    ):
                        # Moving the timer on every chunk is a measurable cost at high rates; the
                        # idle deadline may so fire up to `slack` early, never late.
                        scheduled = min(now + s.idle_timeout, progress.deadline)
                        deadline.reschedule(scheduled)
                    if now >= lease_renew_at:
                        lease_renew_at = now + self._lease_ttl / 3
                        await self._keep_lease(turn)
        except TimeoutError:
            raise UpstreamTimeout(self._which_deadline(progress, loop.time())) from None
        finally:
            if flush_handle is not None:
                flush_handle.cancel()
        speak(parser.finish())
        if segmenter is not None:
            emit_text(segmenter.finish())

    async def _keep_lease(self, turn: Turn) -> None:
        """Renew the session lease; a lease lost to another turn means this one was superseded."""
        sid, ttl = turn.session_id, self._lease_ttl
        if await self.store.renew_lease(sid, turn.id, ttl):
            return
        # Expired (the store restarted empty, or we stalled): take it back if nobody else has.
        if await self.store.acquire_lease(sid, turn.id, ttl):
            return
        raise Superseded(f"turn {turn.id} lost the session lease to another turn")

    def _which_deadline(self, progress: _Progress, now: float) -> str:
        if now >= progress.deadline - 0.001:
            return f"the turn took longer than {self.settings.turn_timeout:g}s"
        if progress.first_text is None:
            if progress.first_byte is None:
                return f"no answer from the upstream within {self.settings.first_token_timeout:g}s"
            return f"no text from the upstream within {self.settings.first_token_timeout:g}s"
        return f"the upstream went silent for {self.settings.idle_timeout:g}s"

    def _stage(self, turn: Turn, progress: _Progress, code: str) -> None:
        stage = self.stages.resolve(code)
        if progress.first_stage is None:
            progress.first_stage = perf_counter()
        progress.stages.append(stage.code)
        progress.terminal_stage = stage.terminal
        turn.emit(StageCode(stage.code, stage.name))

    async def _finish(
        self, turn: Turn, record: TurnRecord, progress: _Progress, status: str, error: CallagentError | None
    ) -> None:
        """Fallback if needed, transcript, metrics, the canonical log line, the terminal event."""
        s = self.settings
        if error is not None and s.fallback_enabled and not progress.terminal_stage:
            self._stage(turn, progress, s.fallback_stage)
            progress.text.append(s.fallback_text)
            turn.emit(TextDelta(s.fallback_text))
        latency = _latency(progress, perf_counter())
        record.reply_text = "".join(progress.text)
        record.spoken_text = turn.spoken_text
        record.stage_codes = progress.stages
        record.status = status
        record.error_type = error.type if error else None
        record.timings = latency
        try:
            if progress.variables:
                before = await self.store.get_variables(turn.session_id)
                record.variables_before = {k: before.get(k) for k in progress.variables}
                await self.store.set_variables(turn.session_id, progress.variables)
            await self.store.save_turn(record)
        except CallagentError as e:
            log.error("transcript_not_saved", session_id=turn.session_id, turn_id=turn.id, error=e.msg)
        if status == "cancelled" and s.interrupt_records == "delete" and progress.first_byte is not None:
            await self._delete_upstream_records(turn, record)
        self._observe(turn, progress, status, error, latency)
        if error is not None:
            turn.emit(Error(error.type, error.msg, str(error.status)))
        else:
            turn.emit(Done(status, latency))

    async def _delete_upstream_records(self, turn: Turn, record: TurnRecord) -> None:
        try:
            await self.upstream.delete_records(turn.session_id, record.upstream_records)
        except CallagentError as e:
            log.warning("interrupted_records_not_deleted", session_id=turn.session_id, turn_id=turn.id, error=e.msg)

    async def _drain(self, turn: Turn, chunks: AsyncGenerator[UpstreamChunk, None]) -> None:
        """Read the rest of a finished reply (the upstream saves the chat meanwhile).

        A new turn of the session waits for it; its cancel brings the deadline to DRAIN_WAIT away.
        """
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT) as turn._drain_deadline:
                async for _ in chunks:
                    pass
        except (TimeoutError, CallagentError):
            pass
        finally:
            turn._drain_deadline = None

    def _observe(
        self, turn: Turn, progress: _Progress, status: str, error: CallagentError | None, latency: dict[str, Any]
    ) -> None:
        m = self.metrics
        m.turns.labels(turn.request.transport, status).inc()
        if progress.stage:
            m.stage_codes.labels(progress.stage).inc()
        if error is not None:
            m.upstream_errors.labels(error.type).inc()
        if progress.first_byte is not None:
            m.upstream_first_byte.observe(progress.first_byte - progress.clock_start)
        if progress.first_text is not None:
            m.first_text.observe(progress.first_text - progress.clock_start)
        m.turn_duration.observe(latency["total_ms"] / 1000)
        log.info(
            "turn",
            session_id=turn.session_id,
            turn_id=turn.id,
            transport=turn.request.transport,
            status=status,
            stage=progress.stage,
            error=error.type if error else None,
            chars=sum(map(len, progress.text)),
            **latency,
        )


def _latency(progress: _Progress, now: float) -> dict[str, float | None]:
    def ms(at: float | None) -> float | None:
        return None if at is None else round((at - progress.clock_start) * 1000, 3)

    return {
        "upstream_first_byte_ms": ms(progress.first_byte),
        "first_text_ms": ms(progress.first_text),
        "stage_ms": ms(progress.first_stage),
        "total_ms": ms(now) or 0.0,
    }


def new_turn_id() -> str:
    return uuid.uuid4().hex[:16]
