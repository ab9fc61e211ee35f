"""A turn's reply pipeline and its deadlines, each an object with named steps.

``ReplyPipeline`` turns the upstream's text pieces into the turn's events::

    feed(piece) -> StateTagParser -> stage(code)  -> StageCode (only codes of the configured format)
                                  -> speak(text)  -> [ClauseSegmenter] -> TextDelta
    flush timer: a clause held back longer than ``flush_delay`` is spoken as it is
    finish(): what the parser and the segmenter still hold

``TurnDeadline`` is the one timer of a turn: a loop timer handle set to the nearest of the
first-token deadline (until the first text), the idle deadline (after it) and the turn
deadline, moved forward as text arrives, then reused for the drain after the reply.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from time import perf_counter

from .events import Event, StageCode, TextDelta
from .segment import ClauseSegmenter, SegmentOptions
from .stages import StageTable
from .tags import StageTag, StateTagParser


class ReplyPipeline:
    __slots__ = (
        "_codes",
        "_emit",
        "_flush_handle",
        "_loop",
        "_parser",
        "_segment",
        "_segmenter",
        "_stages",
        "first_stage",
        "first_text",
        "stages",
        "terminal_stage",
        "text",
    )

    def __init__(
        self,
        emit: Callable[[Event], None],
        stages: StageTable,
        segment: SegmentOptions | None,
        codes: re.Pattern[str] | None = None,
    ) -> None:
        self._emit = emit
        self._codes = codes
        self._stages = stages
        self._parser = StateTagParser()
        self._segment = segment
        self._segmenter = ClauseSegmenter(segment) if segment is not None else None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.text: list[str] = []  # what was sent to the gateway, in order
        self.stages: list[str] = []  # every stage code reported, in order; the last one wins
        self.terminal_stage = False
        self.first_text: float | None = None  # perf_counter() times
        self.first_stage: float | None = None

    @property
    def stage(self) -> str | None:
        return self.stages[-1] if self.stages else None

    def feed(self, piece: str) -> None:
        """One piece of upstream text, tags and all."""
        for item in self._parser.feed(piece):
            if isinstance(item, StageTag):
                self.stage_code(item)
            else:
                self.speak(item)

    def stage_code(self, code: str) -> None:
        stage = self._stages.resolve(code)
        if self._codes is not None and not self._codes.fullmatch(stage.code):
            return  # the workflow's text is not to be trusted: only well-formed codes go out
        if self.first_stage is None:
            self.first_stage = perf_counter()
        self.stages.append(stage.code)
        self.terminal_stage = stage.terminal
        self._emit(StageCode(stage.code, stage.name))

    def speak(self, text: str) -> None:
        segmenter = self._segmenter
        if segmenter is None:
            self._send(text)
            return
        for clause in segmenter.feed(text):
            self._send(clause)
        if segmenter.has_pending and self._flush_handle is None:
            self._arm_flush()

    def finish(self) -> None:
        """The upstream's reply is complete: send what is still held back."""
        self.close()
        self.speak(self._parser.finish())
        if self._segmenter is not None:
            self._send(self._segmenter.finish())

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _send(self, text: str) -> None:
        if not text:
            return
        if self.first_text is None:
            self.first_text = perf_counter()
        self.text.append(text)
        self._emit(TextDelta(text))

    def _arm_flush(self) -> None:
        assert self._segment is not None
        self._flush_handle = self._loop.call_later(self._segment.flush_delay, self._flush_due)

    def _flush_due(self) -> None:
        """A clause waited ``flush_delay`` for its end: speak what is held."""
        assert self._segmenter is not None
        self._flush_handle = None
        self._send(self._segmenter.flush_pending())
        if self._segmenter.has_pending:
            self._arm_flush()


class TurnDeadline:
    """The turn's one timer: a loop timer handle for the nearest of the first-token deadline
    (until the first text), the idle deadline (after it) and the turn deadline. When it expires
    it calls ``expired(self)``; ``explain(now)`` says which deadline that was. After the reply
    the engine reuses it for the drain (``reschedule``): one timer handle per turn.

    Text moving the idle deadline forward (``alive``) only notes the time: a timer that comes
    due early finds the deadline moved and waits again, so a streaming reply, whatever its
    chunk rate, never moves the timer.
    """

    __slots__ = (
        "_armed_at",
        "_expired",
        "_first_token",
        "_handle",
        "_idle",
        "_last_alive",
        "_loop",
        "_turn",
        "_until",
        "end",
        "fired",
        "first_token_at",
    )

    def __init__(self, first_token: float, idle: float, turn: float, expired: Callable[[TurnDeadline], None]) -> None:
        self._first_token, self._idle, self._turn = first_token, idle, turn
        self._expired = expired
        self._loop = asyncio.get_running_loop()
        self.end = self.first_token_at = float("inf")
        self._until: float | None = None  # the deadline while no text flows; None: stopped
        self._last_alive: float | None = None  # the last sign of life after the first text
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self.fired = False

    def start(self, now: float) -> None:
        """The turn's deadlines count from ``now`` (loop time)."""
        self.end = now + self._turn
        self.first_token_at = now + self._first_token
        self.reschedule(min(self.first_token_at, self.end))

    def alive(self, now: float) -> None:
        """The upstream sent something after the reply's first text: the idle deadline restarts."""
        self._last_alive = now
        if now + self._idle < self._armed_at:  # an idle deadline shorter than the first-token one
            self._arm(now + self._idle)

    def when(self) -> float | None:
        """When the deadline expires as things stand; None: stopped."""
        if self._until is None:
            return None
        if self._last_alive is None:
            return self._until
        return min(self._last_alive + self._idle, self.end)

    def reschedule(self, when: float | None) -> None:
        """Expire at ``when`` (loop time) instead, text or not; None: not at all."""
        self._until = when
        self._last_alive = None
        self.fired = False
        if when is None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
                self._armed_at = float("inf")
        elif when != self._armed_at:
            self._arm(when)

    def stop(self) -> None:
        self.reschedule(None)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        due = self.when()
        if due is None:
            return
        if due > self._loop.time():  # moved by text since the timer was set
            self._arm(due)
            return
        self.fired = True
        self._expired(self)

    def explain(self, now: float, first_byte: bool, first_text: bool) -> str:
        if now >= self.end - 0.001:
            return f"the turn took longer than {self._turn:g}s"
        if not first_text:
            if not first_byte:
                return f"no answer from the upstream within {self._first_token:g}s"
            return f"no text from the upstream within {self._first_token:g}s"
        return f"the upstream went silent for {self._idle:g}s"
