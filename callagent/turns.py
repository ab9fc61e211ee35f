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

A turn has one timer (``pipeline.TurnDeadline``): first token, then idle gap, bounded by the
whole-turn deadline; connecting is bounded by the upstream client's own timeout. An upstream
failure still gives the caller the fallback phrase and the gateway the fallback stage before
the ``Error`` event. The reply's text goes through ``pipeline.ReplyPipeline`` (tags, clauses).
``Turn`` itself is in ``turn``, the instance's leases in ``store.lease``. Session operations
that are not turns (variables, undo, delete) live in ``commands``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter
from typing import Any

import structlog

from .errors import CallagentError, StoreUnavailable, UpstreamError, UpstreamTimeout
from .events import Done, Error, TextDelta
from .metrics import Metrics
from .pipeline import ReplyPipeline, TurnDeadline
from .settings import Settings
from .stages import StageTable
from .store import Store, TurnRecord
from .store.lease import InstanceLeases, SessionLease
from .turn import Turn, TurnObserver, TurnRequest
from .upstream.base import (
    END_OF_SPEECH,
    Upstream,
    UpstreamChunk,
    UpstreamRecords,
    UpstreamTurn,
    VariablesUpdate,
)

__all__ = ["Turn", "TurnEngine", "TurnObserver", "TurnRequest", "new_turn_id"]

log = structlog.get_logger(component="callagent.turns")

DRAIN_TIMEOUT = 5.0
"""How long a finished turn keeps reading the upstream for its end-of-stream bookkeeping."""


@dataclass(slots=True)
class _Progress:
    """What a turn holds and has produced so far, beyond its reply pipeline."""

    clock_start: float = field(default_factory=perf_counter)  # the latency figures use a fine clock
    variables: dict[str, Any] = field(default_factory=dict)  # what the workflow changed
    first_byte: float | None = None
    chunks: AsyncGenerator[UpstreamChunk, None] | None = None  # the upstream reply, once asked for
    reply: ReplyPipeline | None = None
    lease: SessionLease | None = None
    records: list[str] | None = None  # the upstream records the turn created, when it said so


class TurnEngine:
    """Starts, stops and runs turns: one at a time per session, here and across instances."""

    def __init__(
        self, settings: Settings, store: Store, upstream: Upstream, stages: StageTable, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.stages = stages
        self.metrics = metrics or Metrics()
        self._running: dict[str, Turn] = {}
        self.observer: TurnObserver | None = None  # set by the console's feed while someone watches
        self._tasks: dict[asyncio.Task[None], Turn] = {}
        self._codes = re.compile(settings.stage_code_pattern)
        self.leases = InstanceLeases(store, settings.lease_ttl)
        self.metrics.running_turns.set_function(lambda: len(self._tasks))  # read when scraped
        store.on_cancel(self._on_remote_cancel)

    def open(self) -> None:
        """Start the instance's lease heartbeat."""
        self.leases.open()

    # -- starting and stopping turns -------------------------------------------------------

    def start(self, request: TurnRequest) -> Turn:
        """Start a turn for the session, cancelling the one it is running (barge-in)."""
        turn = Turn(request, request.turn_id or new_turn_id())
        prior = self._running.get(request.session_id)
        if prior is not None:
            prior.cancel()
        self._running[request.session_id] = turn
        if self.observer is not None:
            turn.observer = self.observer
            self.observer.turn_started(turn)
        turn.task = task = asyncio.create_task(self._run(turn, prior), name=f"turn-{turn.id}")
        self._tasks[task] = turn
        task.add_done_callback(self._task_done)
        return turn

    def _task_done(self, task: asyncio.Task[None]) -> None:
        turn = self._tasks.pop(task)
        if not turn.started:
            # Cancelled from outside before its first step (loop shutdown): its body, which
            # ends every turn, never ran, so end the turn here.
            if self._running.get(turn.session_id) is turn:
                del self._running[turn.session_id]
            turn.emit(Done("cancelled"))

    def turn(self, request: TurnRequest) -> ConsumedTurn:
        """Start a turn for a consumer; leaving the block early (disconnect) cancels it.

        Leaving after the terminal event does not: the turn may still be reading the upstream's
        end-of-stream bookkeeping, which keeps the pooled upstream connection reusable.
        """
        return ConsumedTurn(self, request)

    def running_turns(self) -> list[Turn]:
        return [turn for turn in self._running.values() if not turn.done]

    def running(self, session_id: str) -> Turn | None:
        turn = self._running.get(session_id)
        return turn if turn is not None and not turn.done else None

    async def cancel_elsewhere(self, session_id: str, spoken_text: str | None, turn_id: str | None = None) -> bool:
        """Ask the instance whose turn holds the session's lease to stop it (``turn_id``: only
        that one). True if such a turn was running."""
        owner = await self.store.lease_owner(session_id)  # the lease owner is the running turn
        if owner is None or (turn_id is not None and owner != turn_id):
            return False
        await self.store.publish_cancel(session_id, spoken_text, owner)
        return True

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
        await self.leases.close()

    # -- one turn --------------------------------------------------------------------------

    async def _run(self, turn: Turn, prior: Turn | None) -> None:
        """The turn task: converse, then finish (fallback, record, terminal event), then drain."""
        turn.started = True
        progress = _Progress()
        record = TurnRecord(
            session_id=turn.session_id,
            turn_id=turn.id,
            caller_text=turn.request.text,
            time_stamp=turn.request.time_stamp,
            transport=turn.request.transport,
            received_at=time.time(),
        )
        reply = progress.reply = ReplyPipeline(turn.emit, self.stages, turn.request.segment, self._codes)
        s = self.settings
        # The turn's one timer. Its callback holds the turn and its progress, never the other way
        # round (no reference cycle): the deadline is passed along instead.
        deadline = TurnDeadline(
            s.first_token_timeout, s.idle_timeout, s.turn_timeout, partial(self._deadline_expired, turn, progress)
        )
        try:
            status, error = await self._converse(turn, prior, progress, record, deadline)
            # From here on nothing cancels this task (see Turn.cancel), so every step below runs.
            turn.phase = "finishing"
            deadline.stop()
            reply.close()
            chunks = progress.chunks
            if status != "completed" and chunks is not None:
                await chunks.aclose()  # usually already unwound by the cancel or the error
            await self._finish(turn, record, progress, reply, status, error)
            if status == "completed" and chunks is not None and not turn.cancel_requested:
                turn.phase = "draining"
                await self._drain(turn, chunks, deadline)
        except Exception:
            log.exception("turn_finish_failed", session_id=turn.session_id, turn_id=turn.id)
        finally:
            deadline.stop()
            reply.close()
            if not turn.ended:  # whatever went wrong above, the consumer must not wait forever
                turn.emit(Error(CallagentError("internal error")))
            await self._release(turn, progress)

    async def _converse(
        self, turn: Turn, prior: Turn | None, progress: _Progress, record: TurnRecord, deadline: TurnDeadline
    ) -> tuple[str, CallagentError | None]:
        """Wait for the session, run the upstream, relay its reply: (status, error)."""
        try:
            if turn.cancel_requested:  # stopped before its task ran
                return "cancelled", None
            if prior is not None and not prior.done:
                await prior.wait()
            progress.lease = await self.leases.take(
                turn.session_id,
                turn.id,
                wait=self.settings.first_token_timeout,
                after=prior.id if prior is not None else None,
                lost=lambda: self._superseded(turn),
                failed=turn.fail,
            )
            # The turn's deadlines count from here: the store reads below are part of them.
            deadline.start(asyncio.get_running_loop().time())
            upstream_turn = await self._upstream_turn(turn)
            record.upstream_records = [upstream_turn.human_record_id, upstream_turn.ai_record_id]
            progress.chunks = self.upstream.stream(upstream_turn)
            await self._relay(turn, progress, upstream_turn.variables, deadline)
        except asyncio.CancelledError:
            # Only Turn.cancel(), Turn.fail() (a deadline fails the turn too) and engine shutdown
            # cancel this task; they want Done(cancelled) or the failure, so the cancellation is
            # consumed here and the rest of the turn runs normally.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if turn.failure is not None:
                return "failed", turn.failure
            return "cancelled", None
        except CallagentError as e:
            return "failed", e
        except Exception as e:
            log.exception("turn_crashed", session_id=turn.session_id, turn_id=turn.id)
            return "failed", CallagentError(f"internal error: {type(e).__name__}")
        return "completed", None

    def _deadline_expired(self, turn: Turn, progress: _Progress, deadline: TurnDeadline) -> None:
        """The turn's timer fired: a running turn fails (why: which deadline, and where it
        stood); a draining one stops reading the upstream."""
        if turn.phase == "draining":
            if turn.task is not None:
                turn.task.cancel()
            return
        if progress.chunks is None:
            error: CallagentError = StoreUnavailable(
                f"the session store did not answer within {self.settings.first_token_timeout:g}s"
            )
        else:
            reply = progress.reply
            first_text = reply is not None and reply.first_text is not None
            why = deadline.explain(asyncio.get_running_loop().time(), progress.first_byte is not None, first_text)
            error = UpstreamTimeout(why)
        turn.fail(error)

    async def _upstream_turn(self, turn: Turn) -> UpstreamTurn:
        """The utterance as the upstream sees it: with the session's variables, and its earlier
        turns when the upstream keeps no conversation of its own."""
        sid = turn.session_id
        variables = await self.store.get_variables(sid)
        history: tuple[TurnRecord, ...] = ()
        if self.upstream.history_turns:
            rows = [r for r in await self.store.turns(sid) if not r.deleted and r.turn_id != turn.id]
            history = tuple(rows[-self.upstream.history_turns :])
        return UpstreamTurn(sid, turn.id, turn.request.text, variables, history)

    async def _relay(
        self, turn: Turn, progress: _Progress, variables: Mapping[str, Any], deadline: TurnDeadline
    ) -> None:
        """Upstream chunks -> the reply pipeline, under the turn's deadline, until the reply is complete."""
        loop = asyncio.get_running_loop()
        reply, chunks = progress.reply, progress.chunks
        assert reply is not None and chunks is not None
        async for chunk in chunks:
            if progress.first_byte is None and not isinstance(chunk, UpstreamRecords):
                progress.first_byte = perf_counter()
            if isinstance(chunk, str):
                turn.producing = True
                try:
                    reply.feed(chunk)
                finally:
                    turn.producing = False
                if turn.backlog:
                    await turn.pass_on()  # written from this task when its consumer waits for it
            elif chunk is END_OF_SPEECH:
                break
            elif isinstance(chunk, VariablesUpdate):
                for key, value in chunk.items():
                    if variables.get(key) != value:
                        progress.variables[key] = value
            elif isinstance(chunk, UpstreamRecords):
                progress.records = list(chunk)
            if reply.first_text is not None:
                deadline.alive(loop.time())
        reply.finish()

    async def _finish(
        self,
        turn: Turn,
        record: TurnRecord,
        progress: _Progress,
        reply: ReplyPipeline,
        status: str,
        error: CallagentError | None,
    ) -> None:
        """Fallback if needed, transcript, metrics, the canonical log line, the terminal event."""
        s = self.settings
        if error is not None and s.fallback_enabled and not reply.terminal_stage:
            reply.stage_code(s.fallback_stage)
            reply.text.append(s.fallback_text)
            turn.emit(TextDelta(s.fallback_text))
        latency = _latency(progress, reply, perf_counter())
        if progress.records is not None:
            record.upstream_records = progress.records
        record.reply_text = "".join(reply.text)
        record.spoken_text = turn.spoken_text
        record.stage_codes = reply.stages
        record.status = status
        record.error_type = error.type if error else None
        record.timings = latency
        saved = True
        try:
            if progress.variables:
                before = await self.store.get_variables(turn.session_id)
                record.variables_before = {k: before.get(k) for k in progress.variables}
                await self.store.set_variables(turn.session_id, progress.variables)
            await self.store.save_turn(record)
        except CallagentError as e:
            saved = False
            log.error("transcript_not_saved", session_id=turn.session_id, turn_id=turn.id, error=e.msg)
        if status == "cancelled" and s.interrupt_records == "delete" and progress.first_byte is not None:
            await self._delete_upstream_records(turn, record)
        self._observe(turn, progress, reply, status, error, latency)
        turn.emit(Error(error) if error is not None else Done(status, latency, saved))

    async def _delete_upstream_records(self, turn: Turn, record: TurnRecord) -> None:
        try:
            await self.upstream.delete_records(turn.session_id, record.upstream_records)
        except CallagentError as e:
            log.warning("interrupted_records_not_deleted", session_id=turn.session_id, turn_id=turn.id, error=e.msg)

    async def _drain(self, turn: Turn, chunks: AsyncGenerator[UpstreamChunk, None], deadline: TurnDeadline) -> None:
        """Read the rest of a finished reply (the upstream saves the chat meanwhile), for
        ``DRAIN_TIMEOUT`` at most, on the turn's own timer.

        A new turn of the session waits for it; its cancel brings the deadline to DRAIN_WAIT away.
        """
        deadline.reschedule(asyncio.get_running_loop().time() + DRAIN_TIMEOUT)
        turn._drain_deadline = deadline
        try:
            async for _ in chunks:
                pass
        except CallagentError:
            pass
        except asyncio.CancelledError:
            if not deadline.fired:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            turn._drain_deadline = None
            deadline.stop()

    async def _release(self, turn: Turn, progress: _Progress) -> None:
        """Give back what the turn holds: the upstream response, the session lease, its slot."""
        if self._running.get(turn.session_id) is turn:
            del self._running[turn.session_id]
        try:
            if progress.chunks is not None:
                await progress.chunks.aclose()
        except Exception:
            log.exception("upstream_close_failed", session_id=turn.session_id, turn_id=turn.id)
        if progress.lease is not None:
            self.leases.give_back(progress.lease)  # the next turn does not wait for the store

    def _superseded(self, turn: Turn) -> None:
        """The heartbeat found the session's lease taken by a newer turn: stop this one."""
        log.warning("turn_superseded", session_id=turn.session_id, turn_id=turn.id, reason="lease lost")
        turn.cancel()

    def _observe(
        self,
        turn: Turn,
        progress: _Progress,
        reply: ReplyPipeline,
        status: str,
        error: CallagentError | None,
        latency: dict[str, Any],
    ) -> None:
        m = self.metrics
        m.turns_by(turn.request.transport, status).inc()
        stage = reply.stage
        if stage:
            # A label per code the workflow invents would grow the metrics without bound.
            m.stage_codes_by(stage if stage in self.stages else "other").inc()
        if error is not None:
            m.turn_errors_by(error.type).inc()
            if isinstance(error, UpstreamError):
                m.upstream_errors_by(error.type).inc()
        if progress.first_byte is not None:
            m.upstream_first_byte.observe(progress.first_byte - progress.clock_start)
        if reply.first_text is not None:
            m.first_text.observe(reply.first_text - progress.clock_start)
        m.turn_duration.observe(latency["total_ms"] / 1000)
        log.info(
            "turn",
            session_id=turn.session_id,
            turn_id=turn.id,
            transport=turn.request.transport,
            status=status,
            stage=stage,
            error=error.type if error else None,
            chars=sum(map(len, reply.text)),
            **latency,
        )


class ConsumedTurn:
    """``async with engine.turn(request) as turn``: the turn starts on entry; leaving before its
    terminal event cancels it and waits until it has ended."""

    __slots__ = ("_engine", "_request", "_turn")

    def __init__(self, engine: TurnEngine, request: TurnRequest) -> None:
        self._engine, self._request = engine, request
        self._turn: Turn | None = None

    async def __aenter__(self) -> Turn:
        self._turn = self._engine.start(self._request)
        return self._turn

    async def __aexit__(self, *exc_info: object) -> None:
        turn = self._turn
        if turn is not None and not turn.ended:
            turn.cancel()
            await asyncio.shield(turn.wait())


def _latency(progress: _Progress, reply: ReplyPipeline, now: float) -> dict[str, float | None]:
    start = progress.clock_start
    first_byte, first_text, first_stage = progress.first_byte, reply.first_text, reply.first_stage
    return {
        "upstream_first_byte_ms": None if first_byte is None else round((first_byte - start) * 1000, 3),
        "first_text_ms": None if first_text is None else round((first_text - start) * 1000, 3),
        "stage_ms": None if first_stage is None else round((first_stage - start) * 1000, 3),
        "total_ms": round((now - start) * 1000, 3),
    }


def new_turn_id() -> str:
    return os.urandom(8).hex()
