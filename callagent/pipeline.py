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
    """The turn's one timer: a loop timer handle at the nearest of the first-token deadline
    (until the first text), the idle deadline (after it) and the turn deadline, moved forward
    by ``alive(now)`` as text arrives. When it fires it calls ``expired(self)``; ``explain(now)``
    says which deadline that was. After the reply the engine reuses it for the drain
    (``reschedule``): one timer handle per turn, whatever the turn goes through.
    """

    __slots__ = (
        "_expired",
        "_first_token",
        "_handle",
        "_idle",
        "_loop",
        "_scheduled",
        "_slack",
        "_turn",
        "end",
        "fired",
        "first_token_at",
    )

    def __init__(self, first_token: float, idle: float, turn: float, expired: Callable[[TurnDeadline], None]) -> None:
        self._first_token, self._idle, self._turn = first_token, idle, turn
        self._expired = expired
        self._loop = asyncio.get_running_loop()
        self.end = self.first_token_at = float("inf")
        self._scheduled: float | None = None
        # Moving the timer on every chunk is a measurable cost at high chunk rates; the idle
        # deadline may so fire up to this much early, never late.
        self._slack = min(0.5, idle / 10)
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False

    def start(self, now: float) -> None:
        """The turn's deadlines count from ``now`` (loop time)."""
        self.end = now + self._turn
        self.first_token_at = now + self._first_token
        self.reschedule(min(self.first_token_at, self.end))

    def alive(self, now: float) -> None:
        """The upstream sent something after the reply's first text: the idle deadline restarts."""
        scheduled = self._scheduled
        if scheduled is not None and scheduled < self.end and now + self._idle - scheduled > self._slack:
            self.reschedule(min(now + self._idle, self.end))

    def when(self) -> float | None:
        return self._scheduled

    def reschedule(self, when: float | None) -> None:
        """Fire at ``when`` (loop time) instead; None: not at all."""
        if self._handle is not None:
            self._handle.cancel()
        self._scheduled = when
        self.fired = False
        self._handle = None if when is None else self._loop.call_at(when, self._fire)

    def stop(self) -> None:
        self.reschedule(None)

    def _fire(self) -> None:
        self._handle = None
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
