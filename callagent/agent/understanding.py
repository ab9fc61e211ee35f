"""Understanding: what a caller's utterance says, as intents and numbers see it.

Everything the agent hears goes through here first. ``Speech`` knows how a phone line's recogniser
delivers Chinese speech (dialect forms, fillers and particles, corrections inside an utterance:
the vocabulary of ``callagent/data/speech.toml``) and turns a text into an ``Utterance``: the
forms the rest of the agent compares with (folded: NFKC, lower case, no whitespace, dialect
rewritten; bare: also without punctuation; core: without fillers and particles around it).
``Intent`` recognises what the caller means by keywords, whole short answers, word groups and
phrases that must not count; ``SpokenNumbers`` rewrites spoken Chinese digits as ASCII digits.
These are rules about phone speech, so every question of every script benefits from them.

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
    """One utterance in the forms the agent compares with."""

    raw: str
    folded: str  # NFKC, lower case, no whitespace, dialect rewritten: what keywords are searched in
    bare: str  # folded, punctuation removed: what ``exact`` answers are compared with
    core: str = ""  # bare without fillers and particles around it, repeats said once: also ``exact``
    plain: str = ""  # folded without fillers anywhere: what numbers and plates are read from
    correction: Utterance | None = None  # what follows the last "不对，是..." inside the utterance

    @classmethod
    def of(cls, text: str) -> Utterance:
        """The utterance without any vocabulary (``Speech.hear`` applies the phone-speech rules)."""
        return PLAIN.hear(text)

    @property
    def silent(self) -> bool:
        return not self.bare


def alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of the phrases, longest first."""
    unique = sorted(set(phrases), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, unique))) if unique else None


_REPEATS = re.compile(r"(.{1,3}?)\1+")


class Speech:
    """How a phone line's recogniser delivers speech, and how to read it (``callagent/data/speech.toml``).

    - ``rewrites``: dialect and recogniser forms replaced by the standard one before anything
      else (木有 -> 没有), so every intent and extractor understands them;
    - ``fillers`` and ``particles``: words around a short answer that carry no meaning
      (嗯, 那个; 嘞, 呢, 啦): the utterance's ``core`` drops them at both ends and says a
      repeated word once (对头对头 -> 对头, 嗯嗯对 -> 对), so 行嘞 is 行 and 是的呢 is 是的;
      its ``plain`` form drops fillers anywhere, so "沪A，嗯，八九三九" is still a plate;
    - ``corrections``: markers after which the caller replaces what they just said
      (沪A12345，不对，是沪A12346): extractors read what follows the last one first.
    """

    def __init__(
        self,
        rewrites: Mapping[str, str] | None = None,
        fillers: Iterable[str] = (),
        particles: Iterable[str] = (),
        corrections: Iterable[str] = (),
    ) -> None:
        self._rewrites = dict(rewrites or {})
        self._rewrite = alternation(self._rewrites)
        self._padding = alternation([*fillers, *particles])
        self._fillers = alternation(fillers)
        self._corrections = alternation(corrections)

    def hear(self, text: str) -> Utterance:
        folded = self.rewrite(fold(text))
        bare = NON_WORD.sub("", folded)
        plain = self._fillers.sub("", folded) if self._fillers is not None else folded
        return Utterance(text, folded, bare, self._core(bare), plain, self._correction(text))

    def rewrite(self, text: str) -> str:
        if self._rewrite is None:
            return text
        return self._rewrite.sub(lambda match: self._rewrites[match.group()], text)

    def _core(self, bare: str) -> str:
        core = _REPEATS.sub(r"\1", bare)
        if self._padding is None:
            return core
        while True:
            before = core
            core = _REPEATS.sub(r"\1", core)
            match = self._padding.match(core)
            if match and match.end() < len(core):
                core = core[match.end() :]
            for match in self._padding.finditer(core):
                if match.end() == len(core) and match.start() > 0:
                    core = core[: match.start()]
                    break
            if core == before:
                return core

    def _correction(self, text: str) -> Utterance | None:
        if self._corrections is None:
            return None
        spoken = unicodedata.normalize("NFKC", text)
        ends = [match.end() for match in self._corrections.finditer(spoken)]
        if not ends:
            return None
        tail = spoken[ends[-1] :]
        return self.hear(tail) if NON_WORD.sub("", tail) else None


PLAIN: Final = Speech()


@dataclass(frozen=True, slots=True)
class Intent:
    """What the caller means, recognised by keywords, by whole short answers, or by word groups.

    ``groups`` recognise a meaning said in many ways: the intent matches when every group has one
    of its words in the utterance (为什么/干嘛/做什么 with 手机/电话/号码: why the phone number).
    """

    name: str
    keywords: tuple[str, ...]
    exact: frozenset[str]
    excepted: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...] = ()
    _keywords: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _excepted: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _groups: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keywords", alternation(self.keywords))
        object.__setattr__(self, "_excepted", alternation(self.excepted))
        groups = (alternation(group) for group in self.groups)
        object.__setattr__(self, "_groups", tuple(group for group in groups if group is not None))

    def matches(self, utterance: Utterance) -> bool:
        if utterance.bare in self.exact or (utterance.core and utterance.core in self.exact):
            return True
        if self._keywords is None and not self._groups:
            return False
        text = utterance.folded
        if self._excepted is not None:
            text = self._excepted.sub("\x00", text)  # a blank that joins no neighbours
        if self._keywords is not None and self._keywords.search(text) is not None:
            return True
        return bool(self._groups) and all(group.search(text) for group in self._groups)


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
