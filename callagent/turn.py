"""A turn as its consumers see it: the request, its events, and the handle to stop it.

``TurnEngine`` (``turns``) runs each ``Turn`` in its own task; a streaming transport hands
its writer to ``Turn.deliver`` (the turn's task then writes the reply as it produces it), any
other consumer reads ``Turn.events()``. Either stops a turn with ``cancel`` (a barge-in:
``Done(cancelled)``) or ``fail`` (the turn cannot go on: the fallback, then ``Error``).
Whenever it is stopped, even before its task started, a turn ends with exactly one terminal
event.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import CallagentError
from .events import TERMINAL, Event
from .segment import SegmentOptions

DRAIN_WAIT = 2.0
"""How much longer a finished turn's upstream bookkeeping may go on once the session's next
turn waits for it (see ``Turn.cancel``)."""

MAX_BACKLOG = 1024
"""Events a turn may hold for its consumer; past this it stops reading the upstream until
the consumer has taken half of them (a consumer that never does ends the turn)."""


class Reschedulable(Protocol):
    def when(self) -> float | None: ...

    def reschedule(self, when: float | None) -> None: ...


class TurnObserver(Protocol):
    """Watches turns for the operator console (``callagent.console.feed``).

    The engine holds one only while someone watches; with none, a turn pays one attribute
    check per event. The calls must not block or raise: they run inside the turn.
    """

    def turn_started(self, turn: Turn) -> None: ...

    def turn_event(self, turn: Turn, event: Event) -> None: ...


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
        # The events not yet taken, and the consumer's wait for one: one producer, one
        # consumer, so a deque and a future do what an asyncio.Queue does, for less.
        self.backlog: deque[Event] = deque()
        self._has_events: asyncio.Future[None] | None = None
        self._room = asyncio.Event()  # the consumer has caught up (see MAX_BACKLOG)
        # "running": cancelling interrupts the task. "finishing": the reply is being recorded
        # and its terminal event sent; a cancel only stops what follows. "draining": the
        # caller has the whole reply; a cancel lets the upstream's bookkeeping finish, bounded.
        self.phase = "running"
        self.started = False  # the task has begun running (a task cancelled before that never runs)
        self.failure: CallagentError | None = None  # why fail() stopped it
        self.ended = False  # the terminal event was emitted
        self._ended_event: asyncio.Event | None = None  # made only when someone waits for it
        self._drain_deadline: Reschedulable | None = None  # the turn's timer, while it drains
        self.observer: TurnObserver | None = None  # the console's feed, while someone watches
        # Delivery (see ``deliver``): the consumer's writer, who is writing right now ("turn":
        # the turn's task, "consumer": the consumer's), whether the turn's task is producing
        # events it will write itself, and a write that failed in the turn's task.
        self._write: Callable[[Event], Awaitable[None]] | None = None
        self._writing: str | None = None
        self.producing = False
        self._write_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"Turn({self.id!r}, session={self.session_id!r})"

    def emit(self, event: Event) -> None:
        if self.observer is not None:
            self.observer.turn_event(self, event)
        self.backlog.append(event)
        if isinstance(event, TERMINAL):
            self.ended = True
            if self._ended_event is not None:
                self._ended_event.set()
        elif self._write is not None and (self.producing or self._writing == "turn") and self._write_error is None:
            return  # the turn's own task writes it (``pass_on``): the consumer sleeps on
        self._wake()

    def _wake(self) -> None:
        waiter = self._has_events
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self, spoken_text: str | None = None) -> bool:
        """Stop the turn now; ``spoken_text`` is what the caller heard of it.

        False if the reply was already complete (or the turn already cancelled).
        """
        if self.cancel_requested or self.task is None or self.task.done():
            return False
        self.cancel_requested = True
        if self.phase == "running":
            self.spoken_text = spoken_text
            # A task cancelled before its first step never runs its body, so it would never
            # emit a terminal event: a turn not started yet sees the flag as it starts instead.
            if self.started:
                self.task.cancel()
            return True
        if self._drain_deadline is not None:
            # The upstream is still saving the reply (FastGPT: until [DONE]); whoever waits for this
            # turn (the session's next turn) must not race that save: let it go on, DRAIN_WAIT at most.
            when, wait_until = self._drain_deadline.when(), asyncio.get_running_loop().time() + DRAIN_WAIT
            self._drain_deadline.reschedule(wait_until if when is None else min(when, wait_until))
        return False

    def fail(self, error: CallagentError) -> None:
        """Stop the turn as failed (the caller still gets the fallback, unlike a cancel)."""
        if self.cancel_requested or self.failure is not None or self.phase != "running":
            return
        self.failure = error
        if self.started and self.task is not None:
            self.task.cancel()

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    async def deliver(self, write: Callable[[Event], Awaitable[None]]) -> None:
        """Write every event with ``write``, up to and including the terminal one.

        While this waits, the turn's own task writes the reply's text and stage codes as it
        produces them (``pass_on``): no task switch per event between the upstream read and
        the write. This task writes the rest: the terminal event, and whatever comes while
        the turn's task cannot (a clause flushed by its timer while the upstream is quiet).
        A write that fails in the turn's task raises here, in the consumer's. Only one of the
        two writes at a time, so events leave in order.
        """
        self._write = write
        backlog = self.backlog
        try:
            while True:
                while not backlog and self._write_error is None:
                    await self._next()
                if self._write_error is not None:
                    raise self._write_error
                if self._writing is not None:  # the turn's task is writing: it takes these too
                    await self._next()
                    continue
                event = backlog.popleft()
                self._made_room()
                terminal = isinstance(event, TERMINAL)
                if terminal or not self.cancel_requested:
                    self._writing = "consumer"
                    try:
                        await write(event)
                    finally:
                        self._writing = None
                if terminal:
                    return
        finally:
            self._write = None

    async def pass_on(self) -> None:
        """In the turn's task, after producing events: write them now when the consumer waits
        for them (see ``deliver``); otherwise leave them queued for it, waiting while it holds
        too many (see MAX_BACKLOG)."""
        write, backlog = self._write, self.backlog
        if write is None or self._writing is not None or self._write_error is not None:
            if len(backlog) >= MAX_BACKLOG:
                await self.room()
            return
        self._writing = "turn"
        try:
            while backlog and not isinstance(backlog[0], TERMINAL):
                event = backlog.popleft()
                if not self.cancel_requested:
                    await write(event)
        except (OSError, RuntimeError, TimeoutError) as e:  # the transport's failures: its consumer decides
            self._write_error = e
        finally:
            self._writing = None
        if backlog or self._write_error is not None:
            self._wake()  # what came meanwhile (a terminal event), or the failure, is the consumer's

    async def _next(self) -> None:
        self._has_events = asyncio.get_running_loop().create_future()
        try:
            await self._has_events
        finally:
            self._has_events = None

    def _made_room(self) -> None:
        if len(self.backlog) <= MAX_BACKLOG // 2:
            self._room.set()

    async def events(self) -> AsyncIterator[Event]:
        """The turn's events up to and including its terminal one."""
        events = self.backlog
        while True:
            while not events:
                await self._next()
            event = events.popleft()
            self._made_room()
            if isinstance(event, TERMINAL):
                yield event
                return
            if not self.cancel_requested:
                yield event

    async def room(self) -> None:
        """Until the consumer has caught up, when the turn holds too many events for it."""
        if len(self.backlog) >= MAX_BACKLOG:
            self._room.clear()
            await self._room.wait()

    async def ended_wait(self) -> None:
        """Until the terminal event is queued (the transcript row is saved by then)."""
        if not self.ended:
            if self._ended_event is None:
                self._ended_event = asyncio.Event()
            await self._ended_event.wait()

    async def wait(self) -> None:
        """Until the turn task has ended (transcript saved, lease released)."""
        if self.task is not None and not self.task.done():
            await asyncio.wait([self.task])
