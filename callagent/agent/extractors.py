"""Slot extractors: an utterance in, a slot value out (plates, phone numbers, places, vehicles).

Each extractor is configured by the script's ``[extractors.NAME]`` table and knows one kind of
answer. ``extract`` gets the utterance and, for extractors that collect input over several turns
(``accumulates``), what was held from earlier turns.
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

    @property
    def rejected(self) -> bool:
        return not self.value and not self.partial


class Extractor(Protocol):
    accumulates: bool  # keeps a partial value between utterances

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        """The slot found in the utterance, or None when there is nothing of it."""
        ...


class PlateExtractor:
    """Chinese plate numbers in their spoken forms: 沪A8939, 沪 a 八九三九, 粤B·D12345."""

    accumulates = False
    _SEPARATORS = re.compile(r"[·•・.,，、\-_]")
    _SERIAL_FIXES = str.maketrans("OI", "01")  # plates use neither letter; recognisers do

    def __init__(
        self, numbers: SpokenNumbers, provinces: str, aliases: Mapping[str, str], serial_min: int, serial_max: int
    ) -> None:
        self._numbers = numbers
        self._provinces = {name: name for name in provinces} | dict(aliases)
        names = "|".join(re.escape(name) for name in sorted(self._provinces, key=len, reverse=True))
        self._pattern = re.compile(
            f"(?P<province>{names})(?P<city>[A-Z])(?P<serial>[A-Z0-9]{{{serial_min},{serial_max}}})(?P<suffix>[学警挂领港澳]?)"
        )

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        text = self._SEPARATORS.sub("", self._numbers.to_ascii(utterance.folded)).upper()
        for match in self._pattern.finditer(text):
            serial = match["serial"].translate(self._SERIAL_FIXES)
            if any(char.isdigit() for char in serial):
                province = self._provinces[match["province"]]
                return Extraction(f"{province}{match['city']}{serial}{match['suffix']}")
        return None


class PhoneExtractor:
    """A mobile number, possibly spread over several utterances (138 / 1234 / 5678)."""

    accumulates = True
    _GAPS = re.compile(r"(?<=[0-9])[,，、.。\-]+(?=[0-9])")
    _RUNS = re.compile(r"[0-9]+")

    def __init__(self, numbers: SpokenNumbers, length: int, prefixes: Sequence[str]) -> None:
        self._numbers = numbers
        self._length = length
        self._prefixes = tuple(prefixes)

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
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
        spoken = self._numbers.to_ascii(utterance.bare)
        if spoken.isascii() and spoken.isdigit():
            return spoken  # nothing but digits: even a single one counts
        runs = self._RUNS.findall(self._GAPS.sub("", self._numbers.to_ascii(utterance.folded)))
        return "".join(run for run in runs if len(run) > 1)  # a lone 一 is a word (看一下), not a digit

    def _plausible(self, digits: str) -> bool:
        return any(digits[: len(prefix)] == prefix[: len(digits)] for prefix in self._prefixes)


class PlaceExtractor:
    """Where the accident happened: the caller's words, trimmed of fillers and lead-ins."""

    accumulates = False

    def __init__(
        self,
        fillers: Sequence[str],
        prefixes: Sequence[str],
        suffixes: Sequence[str],
        not_places: Sequence[Intent],
        weak_chars: str,
        min_chars: int,
        max_chars: int,
    ) -> None:
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
    """Single or several vehicles, and how many: 就我一辆 / 撞了护栏 / 两辆车 / 追尾."""

    accumulates = False
    _COUNT = re.compile(r"(?<!第)([0-9]{1,3})(?:辆|台|部)")

    def __init__(
        self,
        numbers: SpokenNumbers,
        single: Intent,
        multi: Intent,
        single_value: str,
        multi_value: str,
        count_variable: str,
        most: int,
    ) -> None:
        self._numbers = numbers
        self._single, self._multi = single, multi
        self._single_value, self._multi_value = single_value, multi_value
        self._count_variable = count_variable
        self._most = most

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        count = self._spoken_count(utterance)
        if count >= 2:
            return self._vehicles(self._multi_value, min(count, self._most))
        if self._multi.matches(utterance):
            return self._vehicles(self._multi_value, 2)
        if count == 1 or self._single.matches(utterance):
            return self._vehicles(self._single_value, 1)
        return None

    def _spoken_count(self, utterance: Utterance) -> int:
        match = self._COUNT.search(self._numbers.to_ascii(utterance.folded))
        return int(match.group(1)) if match else 0

    def _vehicles(self, kind: str, count: int) -> Extraction:
        return Extraction(kind, extra={self._count_variable: count})
