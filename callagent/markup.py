"""Markdown and emoji stripping of a reply meant for speech synthesis.

A model may answer in markdown and with emoji; a synthesizer would read the marks aloud or choke on
them. ``clean_markup`` cleans a whole text; ``MarkupStripper`` cleans a stream piece by piece and
gives exactly the same text for any chunking, holding back only a trailing fragment whose fate
depends on what follows (a run of ``*``, ``_`` or ``~``, a ``!``, ``[label](u``, a marker at the
start of a line). The clause segmenter (``callagent.segment``) runs every piece through one.

Removed: emoji (pictographs, dingbats, flags, keycap and variation-selector glue);
runs of two or more ``*``, ``_`` or ``~`` (``**bold**``, ``__x__``, ``~~gone~~``); every
backtick; at the start of a line, ``#`` to ``######`` plus blanks, ``>`` quote marks, a ``-``,
``*`` or ``+`` list marker plus blanks, and a ``---`` rule. ``[label](url)`` becomes
``label``; an image ``![alt](url)`` disappears (there is nothing to see on a phone). Kept
verbatim: everything else, including a single ``*`` or ``_`` (``3*4``, ``snake_case``),
``-5度``, ``+86``, ``10~20`` and ordered-list numbers (``1.``). A label longer than 100
characters or a url longer than 300 is not a link, which bounds what can be held back.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = ["MarkupStripper", "clean_markup"]


_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags, skin tones
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats
    "\u231a\u231b\u2328\u23cf\u23e9-\u23f3\u23f8-\u23fa"
    "\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe"
    "\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55"
    "\u3030\u303d\u3297\u3299"
    "\u200d\u20e3\ufe0e\ufe0f"  # the glue of emoji sequences: joiner, keycap, variation selectors
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)
_PLAIN_END = re.compile(r"[\n`*_~!\[]")  # characters that may start inline markup
_LINE_MARKS: Final = frozenset("#>-+*")
_BLANKS: Final = " \t"
_LINK_LABEL_MAX: Final = 100
_LINK_URL_MAX: Final = 300

# _line_mark's answer when the line does not start with a marker
_NO_MARK: Final = (-1, False)


def clean_markup(text: str) -> str:
    """The whole-text reference: ``text`` without markdown markup and emoji."""
    return _strip(_EMOJI.sub("", text), line_start=True, final=True)[0]


def _run_end(text: str, i: int) -> int:
    c, j, n = text[i], i + 1, len(text)
    while j < n and text[j] == c:
        j += 1
    return j


def _blank_end(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _BLANKS:
        i += 1
    return i


def _line_mark(text: str, i: int, final: bool) -> tuple[int, bool] | None:
    """A marker at the start of a line: (end of what to drop, still at line start),
    ``_NO_MARK`` if there is none, ``None`` if the text so far cannot tell."""
    n, c = len(text), text[i]
    if c == ">":
        if i + 1 == n:
            return (n, True) if final else None
        if text[i + 1] in _BLANKS:
            j = _blank_end(text, i + 1)
            return None if j == n and not final else (j, True)
        return (i + 1, True) if text[i + 1] in ">\n" else _NO_MARK
    j = _run_end(text, i)
    if j == n and not final:
        return None
    if c == "-" and j - i >= 3:
        return j, False
    if j < n and text[j] in _BLANKS and (j - i == 1 or (c == "#" and j - i <= 6)):
        k = _blank_end(text, j)
        return None if k == n and not final else (k, False)
    return _NO_MARK


def _link_at(text: str, i: int, final: bool) -> tuple[int, int] | Literal[False] | None:
    """``[label](url)`` at ``i``: (index of ``]``, end), ``False`` if not a link,
    ``None`` if the text so far cannot tell."""
    n = len(text)
    j = _closing(text, i + 1, "]", "[\n", _LINK_LABEL_MAX, final)
    if j is None or j is False:
        return j
    k = j + 1
    if k == n:
        return False if final else None
    if text[k] != "(":
        return False
    m = _closing(text, k + 1, ")", "(", _LINK_URL_MAX, final, blank_ends=True)
    if m is None or m is False:
        return m
    return j, m + 1


def _closing(
    text: str, start: int, close: str, breakers: str, most: int, final: bool, blank_ends: bool = False
) -> int | Literal[False] | None:
    """Index of ``close`` from ``start``, within ``most`` characters and before any of
    ``breakers`` (or white space, with ``blank_ends``); ``False`` if none, ``None`` if the
    text so far cannot tell."""
    n = len(text)
    limit = start + most
    j = start
    while True:
        if j == n:
            return False if final else None
        ch = text[j]
        if ch == close:
            return j
        if ch in breakers or (blank_ends and ch.isspace()) or j >= limit:
            return False
        j += 1


def _strip(text: str, line_start: bool, final: bool) -> tuple[str, int, bool]:
    """Remove markup from emoji-free ``text``: (output, characters consumed, line start after).

    Unless ``final``, stops before a fragment that more text could turn into markup; fed the
    rest of the text later, it resumes exactly where the whole-text run would be.
    """
    out: list[str] = []
    n = len(text)
    i = 0
    while i < n:
        c = text[i]
        if line_start:
            if c in _BLANKS:
                out.append(c)
                i += 1
                continue
            if c in _LINE_MARKS:
                mark = _line_mark(text, i, final)
                if mark is None:
                    break
                if mark is not _NO_MARK:
                    i, line_start = mark
                    continue
        if c == "\n":
            out.append(c)
            i += 1
            line_start = True
        elif c == "`":
            i += 1
        elif c in "*_~":
            j = _run_end(text, i)
            if j == n and not final:
                break
            if j - i == 1:
                out.append(c)
                line_start = False
            i = j
        elif c == "!":
            if i + 1 == n and not final:
                break
            if i + 1 < n and text[i + 1] == "[":
                image = _link_at(text, i + 1, final)
                if image is None:
                    break
                if image:
                    i = image[1]
                    continue
            out.append(c)
            i += 1
            line_start = False
        elif c == "[":
            link = _link_at(text, i, final)
            if link is None:
                break
            if link:
                close, end = link
                label = _strip(text[i + 1 : close], line_start=False, final=True)[0]
                i = end
                if label:
                    out.append(label)
                    line_start = False
            else:
                out.append(c)
                i += 1
                line_start = False
        else:
            m = _PLAIN_END.search(text, i + 1)
            j = m.start() if m else n
            out.append(text[i:j])
            i = j
            line_start = False
    return "".join(out), i, line_start


class MarkupStripper:
    """``clean_markup`` fed piece by piece: the outputs always add up to the whole-text result."""

    __slots__ = ("_held", "_line_start")

    def __init__(self) -> None:
        self._held = ""
        self._line_start = True

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def feed(self, piece: str) -> str:
        text = self._held + _EMOJI.sub("", piece)
        out, used, self._line_start = _strip(text, self._line_start, final=False)
        self._held = text[used:]
        return out

    def finish(self) -> str:
        out = _strip(self._held, self._line_start, final=True)[0]
        self._held = ""
        self._line_start = True
        return out
