"""Clause segmentation of a streamed reply for speech synthesis (``segment=clause``).

A synthesizer speaks best when it gets whole clauses, and the caller hears nothing until the
first one leaves, so the first clause must leave as early as possible. ``ClauseSegmenter``
takes the tag-free reply text piece by piece (one LLM token at a time) and returns whole,
cleaned clauses; the turn engine sends each one as a ``text_delta`` and owns the clock.

Cleaning. Every piece first goes through ``callagent.markup.MarkupStripper`` (markdown and emoji
removed, the same text for any chunking); ``clean_markup`` there is the whole-text reference.

Boundaries. Hard stops are ``。！？；… ! ? ; .`` and newline; soft stops are ``，、：, :``.
A clause ends after the whole run of stop marks, closing quotes/brackets and blanks that
follows a stop (``……``, ``？！``, ``。”``, ``. ``), so a cut waits for the first character after
the run; a stalled stream is the flush timer's business. A ``.`` followed by a Latin letter or
digit is not a stop (``e.g``, ``example.com``). The first clause of a reply ends at the first
soft or hard boundary; later clauses only at hard ones.

Protected spans, never cut, not even by the overflow rule or the flush timer:

- numbers: digits joined by single ``. , : ： ． - /`` or blank (``3.5``, ``10:30``,
  ``1,000``, ``13812345678``, ``138 1234 5678``, ``2024-05-01``). A ``.`` right after digits
  is held until the next character shows whether it is a decimal point;
- plates: a province character, a letter, then 4 to 6 letters or digits, each optionally
  preceded by one blank or ``·`` (``沪A8939``, ``粤B·12345``, ``京A 12345``). The issue says
  5-6, but its own example ``沪A8939`` has four after the letter, so four are accepted;
- quotations ``“”「」『』‘’《》""`` of at most ``max_chars`` characters, marks included.
  Stops inside a quotation do not end a clause, but a stop right before the closing mark
  makes a boundary after the mark (``他说“好的。”``). Quotations do not nest: inside one, only
  its own closing mark counts (``“`` is closed by ``”``, ``"`` by ``"``). One still open ``max_chars``
  characters after its opening mark stops being one (the mark becomes plain text and the
  text after it is segmented normally), so a stray quote mark cannot silence the rest of
  the reply.

Lengths. ``min_chars`` counts spoken characters: letters, digits and Chinese characters, not
punctuation or blanks (``好的，`` is 2, ``OK!`` is 2). A boundary whose clause is shorter
waits, so the next boundary takes both. ``max_chars`` counts every character. When any clause
passes ``max_chars`` without a boundary it may use, it is cut at the latest safe soft boundary
within ``max_chars`` (any stop run, or a blank) that leaves ``min_chars``, else at the latest
safe position that does, else (the first ``max_chars`` are one protected span or nothing
speakable) at the first safe position after that. A quotation opened within the first
``max_chars`` is first given its chance to close or lapse, so such a clause may reach about
twice ``max_chars`` before it is cut.

Timer and end. ``flush_pending`` (the engine calls it when ``flush_delay`` passed with text
pending and no boundary) cuts at the latest position known to be safe, ignoring ``min_chars``
and boundaries (a full stop at the very end goes with it). It keeps an unresolved tail (a
number that may go on, a possible plate, an open quotation, a held markup fragment) and returns
``""`` if nothing is safe. Only these clauses and the last one may be shorter than
``min_chars``; after one, the next clause counts as a later one. ``finish`` returns everything
left as one string (it may be short, or longer than ``max_chars``) and resets the segmenter
for a new reply.

Without ``flush_pending`` calls the clauses depend only on the text, never on how it was
chunked. Each character is scanned once; only a held markup fragment, a possible plate (a few
characters) or a lapsed quotation (at most ``max_chars``) is looked at again, and a number
still growing is resumed where its scan stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .markup import MarkupStripper

__all__ = ["ClauseSegmenter", "SegmentOptions"]


@dataclass(frozen=True, slots=True)
class SegmentOptions:
    min_chars: int = 4  # a clause with fewer spoken characters waits for more text
    max_chars: int = 60  # a clause longer than this is cut at a safe place (see the module docstring)
    flush_delay: float = 0.4  # seconds; the engine's timer, informational here

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError("min_chars must be between 0 and max_chars")
        if self.flush_delay <= 0:
            raise ValueError("flush_delay must be positive")


# --- clause boundaries --------------------------------------------------------------------

_SOFT: Final = 1
_HARD: Final = 2
_STOPS: Final = {**dict.fromkeys("，、：,:", _SOFT), **dict.fromkeys("。！？；…!?;.\n", _HARD)}
_TRAILERS: Final = frozenset("”」』’》）)】]")  # closing marks that stay with the stop before them
_QUOTES: Final = {"“": "”", "「": "」", "『": "』", "‘": "’", "《": "》", '"': '"'}
_DIGITS: Final = frozenset("0123456789０１２３４５６７８９")
_NUMBER_JOINERS: Final = frozenset(".,:：．-/ ")
_PROVINCES: Final = frozenset("京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼")
_PLATE_GAPS: Final = frozenset(" ·•・")


def _spoken(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def _number_end(text: str, j: int) -> tuple[int | None, int]:
    """Scan a number from ``j`` (just after its first digit, or where the last call stopped):
    (its end or ``None`` while the text so far cannot tell, where to resume)."""
    n = len(text)
    while True:
        while j < n and text[j] in _DIGITS:
            j += 1
        if j == n or (j + 1 == n and text[j] in _NUMBER_JOINERS):
            return None, j
        if text[j] not in _NUMBER_JOINERS or text[j + 1] not in _DIGITS:
            return j, j
        j += 2


def _plate_end(text: str, i: int) -> int | None:
    """End of the plate starting at province character ``i``, 0 if none, ``None`` if undecided."""
    n = len(text)
    j = i + 1
    count = 0  # the letter, then up to six letters or digits
    while count < 7:
        k = j + 1 if j < n and text[j] in _PLATE_GAPS else j
        if k >= n:
            return None
        ch = text[k]
        if not (ch.isascii() and (ch.isalpha() if count == 0 else ch.isalnum())):
            break
        count += 1
        j = k + 1
    return j if count >= 5 else 0


class ClauseSegmenter:
    """Tag-free reply text in, whole cleaned clauses out; one instance per reply.

    All positions below are indices into ``_text``, the cleaned text not yet emitted.
    """

    __slots__ = (
        "_cands",
        "_closer",
        "_first",
        "_guards",
        "_next_cand",
        "_number_at",
        "_options",
        "_pos",
        "_quote_at",
        "_quote_spoken",
        "_run",
        "_spoken",
        "_stalled_at",
        "_stripper",
        "_text",
    )

    def __init__(self, options: SegmentOptions = SegmentOptions()) -> None:
        self._options = options
        self._reset()

    def _reset(self) -> None:
        self._stripper = MarkupStripper()
        self._text = ""
        self._first = True  # the first clause may end at a soft boundary
        self._pos = 0  # everything before is scanned
        self._spoken = 0  # spoken characters before _pos
        self._run = 0  # kind of the stop run ending at _pos, 0 if none
        self._closer: str | None = None  # the mark that closes the open quotation
        self._quote_at = 0  # where the open quotation starts
        self._quote_spoken = 0  # spoken characters before it
        # (position, kind, spoken characters before it): where a clause may end, in order
        self._cands: list[tuple[int, int, int]] = []
        self._next_cand = 0  # candidates before this one were too early for the current clause
        # (start, end): no cut strictly between; numbers, plates, closed quotations
        self._guards: list[tuple[int, int]] = []
        self._stalled_at = -1  # _pos at which the overflow rule last found no safe cut
        self._number_at = (-1, 0)  # (start, resume) of a number the scan is waiting on

    @property
    def has_pending(self) -> bool:
        """Some text is waiting; the engine arms the flush timer while this is true."""
        return bool(self._text) or self._stripper.holding

    def feed(self, text: str) -> list[str]:
        """A tag-free piece of the reply in; zero or more complete clauses out."""
        clean = self._stripper.feed(text)
        if not clean:
            return []
        self._text += clean
        self._scan()
        clauses = []
        while (cut := self._next_cut()) is not None:
            clauses.append(self._cut(cut))
        return clauses

    def flush_pending(self) -> str:
        """The flush timer fired: emit up to the latest safe position, ``""`` if there is none."""
        if not self._text:
            return ""
        end = self._pos
        if end == len(self._text) - 1 and self._text[end] == ".":
            end += 1  # only unresolved because a Latin letter could follow: safe to cut after
        unsafe = self._unsafe(end)
        for p in range(end, 0, -1):
            if not unsafe[p]:
                if p > self._pos:  # that full stop goes out: scan it as one
                    self._pos, self._run = p, max(self._run, _HARD)
                return self._cut(p)
        return ""

    def finish(self) -> str:
        """End of the reply: everything left, cleaned; the segmenter starts over."""
        rest = self._text + self._stripper.finish()
        self._reset()
        return rest

    def _scan(self) -> None:
        """Classify the new characters: stop runs, candidates, protected spans."""
        text = self._text
        n = len(text)
        i, run, spoken = self._pos, self._run, self._spoken
        max_chars = self._options.max_chars
        while i < n:
            closer = self._closer
            if closer is not None and i - self._quote_at >= max_chars:
                # Too long for a quotation: its mark is plain text, rescan what followed it.
                q = self._quote_at
                self._closer = None
                self._number_at = (-1, 0)
                self._guards = [g for g in self._guards if g[0] < q]
                i, run, spoken = q + 1, 0, self._quote_spoken
                continue
            c = text[i]
            if c in _DIGITS:
                start, resume = self._number_at
                j, resume = _number_end(text, resume if start == i else i + 1)
                if j is None:
                    self._number_at = (i, resume)  # a long digit run is not rescanned per piece
                    break
                if run:
                    self._candidate(i, run, spoken)
                    run = 0
                if j - i > 1:
                    self._guards.append((i, j))
                spoken += _spoken(text[i:j])
                i = j
                continue
            if c == closer:
                self._closer = None
                self._guards.append((self._quote_at, i + 1))
                i += 1  # a stop run before the mark goes on through it
                continue
            if closer is None and c in _QUOTES:
                if run:
                    self._candidate(i, run, spoken)
                    run = 0
                self._closer = _QUOTES[c]
                self._quote_at, self._quote_spoken = i, spoken
                i += 1
                continue
            kind = _STOPS.get(c, 0)
            if c == ".":
                if i + 1 == n:
                    break
                if text[i + 1].isascii() and text[i + 1].isalnum():
                    kind = 0
            if kind:
                run = max(run, kind)
                i += 1
                continue
            if run and (c in _TRAILERS or c.isspace()):
                i += 1
                continue
            if c in _PROVINCES:
                end = _plate_end(text, i)
                if end is None:
                    break
                if end:
                    self._guards.append((i, end))
            if run:
                self._candidate(i, run, spoken)
                run = 0
            spoken += c.isalnum()
            i += 1
        self._pos, self._run, self._spoken = i, run, spoken

    def _candidate(self, pos: int, kind: int, spoken: int) -> None:
        # Stops inside an open quotation are no boundary; the one before its closing mark
        # becomes one when the run after the mark ends. Position 0 happens when the timer
        # cut in the middle of a run: there is nothing before it to send.
        if self._closer is None and pos > 0:
            self._cands.append((pos, kind, spoken))

    def _next_cut(self) -> int | None:
        options = self._options
        need = _SOFT if self._first else _HARD
        cands = self._cands
        while self._next_cand < len(cands):
            pos, kind, spoken = cands[self._next_cand]
            if pos > options.max_chars:
                break
            if kind >= need and spoken >= options.min_chars:
                return pos
            self._next_cand += 1
        # A quotation open inside the first max_chars will close or lapse within max_chars of
        # its mark; until then nobody knows whether the positions after the mark are safe.
        undecided = self._closer is not None and self._quote_at < options.max_chars
        if self._pos > options.max_chars and self._pos != self._stalled_at and not undecided:
            cut = self._overflow_cut()
            if cut is None:
                self._stalled_at = self._pos
            return cut
        return None

    def _overflow_cut(self) -> int | None:
        """The clause is past ``max_chars`` with no usable boundary: where to cut it."""
        text, end = self._text, self._pos
        limit, least = self._options.max_chars, self._options.min_chars
        if self._spoken < least:
            return None  # nothing worth a clause yet (only punctuation so far)
        unsafe = self._unsafe(end)
        spoken = [0] * (end + 1)
        for p in range(1, end + 1):
            spoken[p] = spoken[p - 1] + text[p - 1].isalnum()
        soft = {pos for pos, _, _ in self._cands if pos <= limit}
        fallback = None
        for p in range(limit, 0, -1):
            if spoken[p] < least:
                break
            if unsafe[p]:
                continue
            if p in soft or text[p - 1].isspace():
                return p
            if fallback is None:
                fallback = p
        if fallback is not None:
            return fallback
        for p in range(limit + 1, end + 1):
            if not unsafe[p] and spoken[p] >= least:
                return p
        return None

    def _unsafe(self, end: int) -> bytearray:
        """Flags for positions 0..end: 1 where a cut would split a protected span."""
        unsafe = bytearray(end + 1)
        for start, stop in self._guards:
            for p in range(start + 1, min(stop, end + 1)):
                unsafe[p] = 1
        if self._closer is not None:
            for p in range(self._quote_at + 1, end + 1):
                unsafe[p] = 1
        return unsafe

    def _cut(self, k: int) -> str:
        clause, self._text = self._text[:k], self._text[k:]
        taken = _spoken(clause)
        self._pos -= k
        self._spoken -= taken
        self._quote_at -= k
        self._quote_spoken -= taken
        self._cands = [(p - k, kind, s - taken) for p, kind, s in self._cands if p > k]
        self._guards = [(a - k, b - k) for a, b in self._guards if b > k]
        self._number_at = (self._number_at[0] - k, self._number_at[1] - k)
        self._next_cand = 0
        self._stalled_at = -1
        self._first = False
        return clause
