"""Understanding: what a caller's utterance says, as intents and numbers see it.

Everything the agent hears goes through here first. ``Utterance`` holds the text in the forms the
rest of the agent compares with (folded: NFKC, lower case, no whitespace; bare: also without
punctuation); ``Intent`` recognises what the caller means by keywords, whole short answers and
phrases that must not count; ``SpokenNumbers`` rewrites spoken Chinese digits as ASCII digits.

Numbers: plates and phone numbers are spoken digit by digit (幺三八, 八九三九). cn2an reads such
a run as one integer, which loses leading zeros, so runs without unit characters are mapped digit
by digit with cn2an's own numeral table (零〇一壹幺二两...), extended by the script's
``digit_aliases`` (洞, 拐...). Runs with units (八千九百三十九, 十二) are read by cn2an's parser.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import cn2an
from cn2an.conf import NUMBER_CN2AN, UNIT_CN2AN

MAX_UTTERANCE: Final = 500  # characters heard per turn; a spoken sentence is far shorter

NON_WORD = re.compile(r"[\W_]+")
WHITESPACE = re.compile(r"\s+")


def fold(text: str) -> str:
    """Text as intents see it: NFKC (full-width to ASCII), lower case, no whitespace."""
    return WHITESPACE.sub("", unicodedata.normalize("NFKC", text)).lower()


@dataclass(frozen=True, slots=True)
class Utterance:
    raw: str
    folded: str
    bare: str  # folded, punctuation removed: what ``exact`` answers are compared with

    @classmethod
    def of(cls, text: str) -> Utterance:
        folded = fold(text)
        return cls(text, folded, NON_WORD.sub("", folded))

    @property
    def silent(self) -> bool:
        return not self.bare


def alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of the phrases, longest first."""
    unique = sorted(set(phrases), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, unique))) if unique else None


@dataclass(frozen=True, slots=True)
class Intent:
    """What the caller means, recognised by keywords or by whole short answers."""

    name: str
    keywords: tuple[str, ...]
    exact: frozenset[str]
    excepted: tuple[str, ...]
    _keywords: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _excepted: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keywords", alternation(self.keywords))
        object.__setattr__(self, "_excepted", alternation(self.excepted))

    def matches(self, utterance: Utterance) -> bool:
        if utterance.bare in self.exact:
            return True
        if self._keywords is None:
            return False
        text = utterance.folded
        if self._excepted is not None:
            text = self._excepted.sub("\x00", text)  # a blank that joins no neighbours
        return self._keywords.search(text) is not None


# --------------------------------------------------------------------------------------------
# Numbers


def _read_numeral(run: str) -> int | None:
    """A numeral with units (八千九百三十九) as an integer, or None if cn2an cannot read it."""
    try:
        return int(cn2an.cn2an(run, "normal"))
    except Exception:  # cn2an reports malformed numerals with ValueError, KeyError and others
        return None


class SpokenNumbers:
    """Rewrites spoken Chinese digits and numerals in a text as ASCII digits."""

    def __init__(self, digit_aliases: Mapping[str, str]) -> None:
        digits = {char: str(value) for char, value in NUMBER_CN2AN.items()} | dict(digit_aliases)
        self._digits = str.maketrans(digits)
        self._units = frozenset(UNIT_CN2AN)
        self._runs = re.compile("[" + re.escape("".join(digits) + "".join(UNIT_CN2AN)) + "]+")

    def to_ascii(self, text: str) -> str:
        return self._runs.sub(self._convert, text)

    def _convert(self, match: re.Match[str]) -> str:
        run = match.group()
        if not self._units.isdisjoint(run):
            value = _read_numeral(run)
            if value is not None:
                return str(value)
        return run.translate(self._digits)
