"""Incremental extraction of ``<state>CODE</state>`` tags from streamed reply text.

The workflow writes its stage code inline, usually first: ``<state>1002</state>您好...``.
Chunks may cut a tag anywhere (``<sta`` | ``te>10`` | ``02</state>``). The parser emits
text the moment it cannot be part of a tag and holds back only a trailing fragment that
could still become one, so the first syllable is never delayed by the tag machinery.

A tag is ``<state>`` + at most ``MAX_CODE_CHARS`` characters without ``<`` or ``>`` +
``</state>``; the code is stripped of surrounding blanks, and an empty code is removed
without producing a stage. Anything else is ordinary text: a malformed or unclosed tag
(``<state>10`` at the end of the reply) is spoken as written rather than silently lost,
so the output for any chunking equals ``TAG_RE.sub("", whole_text)``.
"""

from __future__ import annotations

import re

OPEN = "<state>"
CLOSE = "</state>"
MAX_CODE_CHARS = 32
TAG_RE = re.compile(rf"<state>([^<>]{{0,{MAX_CODE_CHARS}}})</state>")


def strip_tags(text: str) -> tuple[str, list[str]]:
    """The whole-text reference: (text without tags, non-empty codes in order)."""
    codes = [c for c in (m.strip() for m in TAG_RE.findall(text)) if c]
    return TAG_RE.sub("", text), codes


def _could_become_tag(fragment: str) -> bool:
    """True if ``fragment`` (starting with ``<``) is a prefix of some complete tag."""
    if len(fragment) <= len(OPEN):
        return OPEN.startswith(fragment)
    if not fragment.startswith(OPEN):
        return False
    rest = fragment[len(OPEN) :]
    lt = rest.find("<")
    code = rest if lt < 0 else rest[:lt]
    if len(code) > MAX_CODE_CHARS or ">" in code:
        return False
    return lt < 0 or CLOSE.startswith(rest[lt:])


class StateTagParser:
    """Feed text pieces; get back ``str`` (speakable text) and ``StageTag`` items in order."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> list[str | StageTag]:
        text = self._held + piece if self._held else piece
        if "<" not in text:
            self._held = ""
            return [text] if text else []
        out: list[str | StageTag] = []
        start = 0  # start of text not yet emitted
        pos = 0
        while (lt := text.find("<", pos)) >= 0:
            m = TAG_RE.match(text, lt)
            if m:
                if lt > start:
                    out.append(text[start:lt])
                code = m.group(1).strip()
                if code:
                    out.append(StageTag(code))
                start = pos = m.end()
            elif _could_become_tag(text[lt:]):
                if lt > start:
                    out.append(text[start:lt])
                self._held = text[lt:]
                return out
            else:
                pos = lt + 1
        if start < len(text):
            out.append(text[start:])
        self._held = ""
        return out

    def finish(self) -> str:
        """End of reply: whatever was held back is plain text after all."""
        held, self._held = self._held, ""
        return held


class StageTag(str):
    """A stage code found in the reply (raw, before alias lookup)."""

    __slots__ = ()
