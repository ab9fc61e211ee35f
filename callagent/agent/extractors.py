"""Slot extractors: an utterance in, a slot value out (phone numbers, places, vehicles, choices).

Each extractor is configured by the script's ``[extractors.NAME]`` table and knows one kind of
answer (plates are in ``plates``). ``extract`` reads an answer to its own question and gets, for
extractors that collect input over several turns (``accumulates``), what was held from earlier
turns. ``spot`` reads any utterance for a value said in passing, before it was asked ("我在中山路
追尾了，电话13812345678"): it is stricter, since the caller was talking about something else.
``reads_as`` names how a value is read back (see ``speaking``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .understanding import NON_WORD, WHITESPACE, Intent, SpokenNumbers, Utterance, alternation, fold


@dataclass(frozen=True, slots=True)
class Extraction:
    """What an extractor made of an utterance.

    ``value`` is a complete slot value; ``partial`` is input kept until more arrives (phone
    digits); ``extra`` are further variables to set. Neither value nor partial means the input
    was recognised but unusable (eleven digits that are no mobile number): it counts as a miss
    and what was collected so far is dropped.
    """

    value: str = ""
    partial: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    more: tuple[str, ...] = ()  # further values said at once (both plates in one breath)

    @property
    def rejected(self) -> bool:
        return not self.value and not self.partial


class Extractor(Protocol):
    accumulates: bool  # keeps a partial value between utterances
    reads_as: str  # "plate", "phone" or "text"

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        """The slot found in an answer to its question, or None when there is nothing of it."""
        ...

    def spot(self, utterance: Utterance) -> Extraction | None:
        """A complete value said in passing, or None."""
        ...


class PhoneExtractor:
    """A mobile number, possibly spread over several utterances (138 / 1234 / 5678)."""

    accumulates = True
    reads_as = "phone"
    _GAPS = re.compile(r"(?<=[0-9])[,，、.。\-]+(?=[0-9])")
    _RUNS = re.compile(r"[0-9]+")

    def __init__(self, numbers: SpokenNumbers, length: int, prefixes: Sequence[str]) -> None:
        self._numbers = numbers
        self._length = length
        self._prefixes = tuple(prefixes)
        self._whole = re.compile(f"(?<![0-9a-z])[0-9]{{{length}}}(?![0-9])")

    def spot(self, utterance: Utterance) -> Extraction | None:
        text = self._GAPS.sub("", self._numbers.to_ascii(utterance.plain))
        for match in self._whole.finditer(text):
            if self._plausible(match.group()):
                return Extraction(match.group())
        return None

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        if not (partial.isascii() and partial.isdigit()):
            partial = ""  # what was held is no digits: garbage in the call state
        digits = self._digits(utterance)
        if not digits:
            return None
        for candidate in (digits, partial + digits):  # the whole number said again wins
            if len(candidate) == self._length and self._plausible(candidate):
                return Extraction(candidate)
        if len(partial + digits) < self._length and self._plausible(partial + digits):
            return Extraction(partial=partial + digits)
        if len(digits) < self._length and self._plausible(digits):
            return Extraction(partial=digits)  # the caller started over
        return Extraction()
    def _digits(self, utterance: Utterance) -> str:
        spoken = self._numbers.to_ascii(NON_WORD.sub("", utterance.plain))
        if spoken.isascii() and spoken.isdigit():
            return spoken  # nothing but digits (fillers aside): even a single one counts
        runs = self._RUNS.findall(self._GAPS.sub("", self._numbers.to_ascii(utterance.plain)))
        return "".join(run for run in runs if len(run) > 1)  # a lone 一 is a word (看一下), not a digit

    def _plausible(self, digits: str) -> bool:
        return any(digits[: len(prefix)] == prefix[: len(digits)] for prefix in self._prefixes)


class PlaceExtractor:
    """Where the accident happened: the caller's words, trimmed of fillers and lead-ins.

    Said in passing, a place needs a marker before it (在, 位于), a landmark word ending it
    (路, 路口, 高架, 小区...) and a name before the landmarks: "我在中山路和人民路路口被追尾了"
    gives 中山路和人民路路口, "我在高速路上" gives nothing (the question will be asked).
    """

    accumulates = False
    reads_as = "text"

    def __init__(
        self,
        fillers: Sequence[str],
        prefixes: Sequence[str],
        suffixes: Sequence[str],
        not_places: Sequence[Intent],
        weak_chars: str,
        min_chars: int,
        max_chars: int,
        markers: Sequence[str] = (),
        landmarks: Sequence[str] = (),
    ) -> None:
        self._landmarks = frozenset(landmarks)
        marker, landmark = alternation(markers), alternation(landmarks)
        self._mention = None
        if marker is not None and landmark is not None:
            self._mention = re.compile(f"(?:{marker.pattern})(?P<place>[^，。,.!?！？；;]*(?:{landmark.pattern}))")
        self._leads = tuple(sorted({*fillers, *prefixes}, key=len, reverse=True))
        self._tails = tuple(sorted({*fillers, *suffixes}, key=len, reverse=True))
        phrases = [phrase for intent in not_places for phrase in (*intent.keywords, *intent.exact)]
        self._not_place = alternation(phrases)
        self._weak_chars = frozenset(weak_chars)
        self._min_chars = min_chars
        self._max_chars = max_chars

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        spoken = WHITESPACE.sub(" ", unicodedata.normalize("NFKC", utterance.raw))
        text = self._trim(spoken.replace("<", "").replace(">", ""))  # never a tag in a spoken value
        meaningful = NON_WORD.sub("", fold(text))
        if self._not_place is not None:
            meaningful = self._not_place.sub("", meaningful)
        if sum(char not in self._weak_chars for char in meaningful) < self._min_chars:
            return None
        return Extraction(text[: self._max_chars])

    def spot(self, utterance: Utterance) -> Extraction | None:
        if self._mention is None:
            return None
        spoken = WHITESPACE.sub(" ", unicodedata.normalize("NFKC", utterance.raw))
        for match in self._mention.finditer(spoken):
            found = self.extract(Utterance.of(match["place"]), "")
            if found is not None and self._named(found.value):
                return found
        return None

    def _named(self, place: str) -> bool:
        """Whether a place has a name before its landmark words (中山路, not 高速路 or 路口)."""
        name = NON_WORD.sub("", place)
        while stripped := next((name[: -len(word)] for word in self._landmarks if name.endswith(word)), ""):
            name = stripped
        return len(name) >= self._min_chars and name not in self._landmarks

    def _trim(self, text: str) -> str:
        while True:
            before = text
            text = _strip_non_word(text)
            text = next((text[len(lead) :] for lead in self._leads if text.startswith(lead)), text)
            text = next((text[: -len(tail)] for tail in self._tails if text.endswith(tail)), text)
            if text == before:
                return text


def _strip_non_word(text: str) -> str:
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


class VehiclesExtractor:
    """Single or several vehicles, and how many: 就我一辆 / 撞了护栏 / 两辆车 / 三个车 / 追尾.

    In order: a count of two or more (两辆, 三个车, 俩车); the ``multi`` intent (追尾, 对方);
    a count of one or the ``single`` intent (撞了护栏); then a collision (碰, 撞, 怼) with no
    object named, which takes two vehicles (跟前面那台碰了, 被后面的怼了).
    """

    accumulates = False
    reads_as = "text"
    _COUNT = re.compile(r"(?<!第)([0-9]{1,3})(?:辆|台|部|个车|车)")  # 两辆, 三台, 三个车, 两车
    # Answering the question, a bare 两个 counts vehicles too (said in passing it may count people).
    _ANSWERED_COUNT = re.compile(r"(?<!第)([0-9]{1,3})(?:辆|台|部|个车|车|个(?![\u4e00-\u9fff]))")

    def __init__(
        self,
        numbers: SpokenNumbers,
        single: Intent,
        multi: Intent,
        single_value: str,
        multi_value: str,
        count_variable: str,
        most: int,
        collision: Intent | None = None,
        count_words: Mapping[str, int] | None = None,
    ) -> None:
        self._numbers = numbers
        self._single, self._multi, self._collision = single, multi, collision
        self._count_words = {word: str(count) for word, count in (count_words or {}).items()}
        self._count_word = alternation(self._count_words)
        self._single_value, self._multi_value = single_value, multi_value
        self._count_variable = count_variable
        self._most = most

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        return self._read(utterance, self._ANSWERED_COUNT)

    def spot(self, utterance: Utterance) -> Extraction | None:
        return self._read(utterance, self._COUNT)

    def _read(self, utterance: Utterance, counts: re.Pattern[str]) -> Extraction | None:
        count = self._spoken_count(utterance, counts)
        if count >= 2:
            return self._vehicles(self._multi_value, min(count, self._most))
        if self._multi.matches(utterance):
            return self._vehicles(self._multi_value, 2)
        if count == 1 or self._single.matches(utterance):
            return self._vehicles(self._single_value, 1)
        if self._collision is not None and self._collision.matches(utterance):
            return self._vehicles(self._multi_value, 2)
        return None

    def _spoken_count(self, utterance: Utterance, counts: re.Pattern[str]) -> int:
        text = utterance.folded
        if self._count_word is not None:
            text = self._count_word.sub(lambda match: self._count_words[match.group()], text)
        match = counts.search(self._numbers.to_ascii(text))
        return int(match.group(1)) if match else 0

    def _vehicles(self, kind: str, count: int) -> Extraction:
        return Extraction(kind, extra={self._count_variable: count})


class ChoiceExtractor:
    """One of a few values, by intent: 否 for 没有 / 都没事, 是 for 有, 不确定 for 不清楚.

    ``answers`` are tried in order on an answer to the question; ``stated`` on anything else the
    caller says, so they must be explicit (没人受伤, not a bare 没有).
    """

    accumulates = False
    reads_as = "text"

    def __init__(self, answers: Sequence[tuple[Intent, str]], stated: Sequence[tuple[Intent, str]]) -> None:
        self._answers = tuple(answers)
        self._stated = tuple(stated)

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        return self._first(self._answers, utterance)

    def spot(self, utterance: Utterance) -> Extraction | None:
        return self._first(self._stated, utterance)

    @staticmethod
    def _first(choices: Sequence[tuple[Intent, str]], utterance: Utterance) -> Extraction | None:
        return next((Extraction(value) for intent, value in choices if intent.matches(utterance)), None)
