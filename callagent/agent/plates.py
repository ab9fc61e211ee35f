"""The plate extractor: Chinese plate numbers as a phone line's recogniser delivers them.

A plate is a province code, a city letter and 4 to 6 letters or digits (沪A8939, 粤B·D12345,
苏A12345F), optionally 学/警/挂... The recogniser writes it in many ways, all read here:

- digits spoken in Chinese, one by one or as a number (沪A幺零零八六, 沪A八千九百三十九);
- the province as its name or a homophone (上海A..., 胡A..., 舒E..., 炉B...) from
  ``province_aliases``, and letters as the words a caller says for them (比 for B, 西 for C,
  迪 for D) from ``letter_words``;
- split over utterances ("沪A" ... "幺两三四五"): a province and a letter with too few characters
  after them are held (``accumulates``) and the next utterance's letters and digits complete them;
- several plates in one breath ("我的是沪B12345，对方是沪C67890"): the first is the value, the
  others ``more`` (the next vehicles' plates).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .extractors import Extraction
from .understanding import NON_WORD, SpokenNumbers, Utterance


class PlateExtractor:
    """Chinese plate numbers in their spoken forms: 沪A8939, 沪 a 八九三九, 粤B·D12345."""

    accumulates = True
    reads_as = "plate"
    _SEPARATORS = re.compile(r"[·•・.,，、\-_]")
    _SERIAL_FIXES = str.maketrans("OI", "01")  # plates use neither letter; recognisers do
    _RUNS = re.compile(r"[A-Z0-9]{2,}")

    def __init__(
        self,
        numbers: SpokenNumbers,
        provinces: str,
        aliases: Mapping[str, str],
        serial_min: int,
        serial_max: int,
        letter_words: Mapping[str, str] | None = None,
    ) -> None:
        self._numbers = numbers
        self._provinces = {name: name for name in provinces} | dict(aliases)
        self._letters = {word.upper(): letter for word, letter in (letter_words or {}).items()}
        names = _choice(self._provinces)
        char = "[A-Z0-9]" if not self._letters else f"(?:[A-Z0-9]|{_choice(self._letters)})"
        letter = "[A-Z]" if not self._letters else f"(?:[A-Z]|{_choice(self._letters)})"
        self._pattern = re.compile(
            f"(?P<province>{names})(?P<city>{letter})(?P<serial>{char}{{{serial_min},{serial_max}}})(?P<suffix>[学警挂领港澳]?)"
        )
        self._start = re.compile(f"(?P<province>{names})(?P<city>{letter})(?P<serial>{char}{{0,{serial_min - 1}}})$")
        self._held = re.compile(f"[{re.escape(provinces)}][A-Z][A-Z0-9]{{0,{serial_min - 1}}}")
        self._letter_word = re.compile(_choice(self._letters)) if self._letters else None

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        text = self._text(utterance)
        found = self._plates(text)
        if found is not None:
            return found
        if partial and self._held.fullmatch(partial):
            return self._continue(partial, utterance)
        start = self._start.search(NON_WORD.sub("", text))
        if start is not None:
            return Extraction(partial=self._canonical(start))
        return None

    def spot(self, utterance: Utterance) -> Extraction | None:
        return self._plates(self._text(utterance))

    def _text(self, utterance: Utterance) -> str:
        return self._SEPARATORS.sub("", self._numbers.to_ascii(utterance.plain)).upper()

    def _plates(self, text: str) -> Extraction | None:
        plates: list[str] = []
        for match in self._pattern.finditer(text):
            plate = self._canonical(match)
            if any(char.isdigit() for char in plate[2:]) and plate not in plates:
                plates.append(plate)
        return Extraction(plates[0], more=tuple(plates[1:])) if plates else None

    def _canonical(self, match: re.Match[str]) -> str:
        province = self._provinces[match["province"]]
        serial = self._spell(match["serial"]).translate(self._SERIAL_FIXES)
        return f"{province}{self._spell(match['city'])}{serial}{match.groupdict().get('suffix') or ''}"

    def _spell(self, text: str) -> str:
        if self._letter_word is None:
            return text
        return self._letter_word.sub(lambda match: self._letters[match.group()], text)

    def _continue(self, partial: str, utterance: Utterance) -> Extraction | None:
        """The rest of a plate whose start was heard before: its letters and digits."""
        spoken = self._spell(NON_WORD.sub("", self._text(utterance)))
        # Nothing but letters and digits: even a single one counts; amid words, a lone 一 is a word (看一下).
        rest = spoken if spoken.isascii() and spoken.isalnum() else "".join(self._RUNS.findall(spoken))
        if not rest:
            return None
        combined = partial + rest
        found = self._pattern.fullmatch(combined)
        if found is not None:
            return self._plates(combined)
        start = self._start.fullmatch(combined)
        if start is not None:
            return Extraction(partial=self._canonical(start))
        return Extraction()


def _choice(words: Mapping[str, str]) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
