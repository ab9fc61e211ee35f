"""Read-backs as a synthesizer should speak them, while the variables keep the canonical value.

A Chinese TTS engine reads "8939" as 八千九百三十九 and "139" as 一百三十九; a call-taker reads a
number digit by digit. So a value read back to the caller (``{value}`` and ``{partial}`` in the
script's texts) is spoken the way a call-taker says it, set in the script's ``[speech]`` table:

- phone numbers digit by digit in groups (3-4-4: 幺三八，幺二三四，五六七八), 1 said 幺;
- plates character by character (沪 A 八 九 三 九), so letters and digits are never read as words;
- anything else as it is.

The slot variables, what the gateway reads with ``get_info`` and what reaches a workflow, keep
the canonical value (13812345678, 沪A8939).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DIGITS: Final = "零幺二三四五六七八九"


@dataclass(frozen=True, slots=True)
class Voice:
    """How values are read back: ``digits`` (the word for 0..9), groups, separators."""

    digits: str = DIGITS
    phone_groups: tuple[int, ...] = (3, 4, 4)
    group_separator: str = "，"
    plate_separator: str = " "
    read_digits: bool = True  # False: read back the canonical value as it is

    def __post_init__(self) -> None:
        if len(self.digits) != 10:
            raise ValueError("digits must name the ten digits 0 to 9, in order")

    def read(self, kind: str, value: str) -> str:
        """``value`` (a slot of an extractor that ``reads_as`` ``kind``) as it is spoken."""
        if not self.read_digits:
            return value
        if kind == "phone":
            return self.phone(value)
        if kind == "plate":
            return self.plate(value)
        return value

    def phone(self, value: str) -> str:
        return self.group_separator.join(self._say(group) for group in _groups(value, self.phone_groups))

    def plate(self, value: str) -> str:
        return self.plate_separator.join(self._say(char) for char in value)

    def _say(self, text: str) -> str:
        return "".join(self.digits[int(char)] if "0" <= char <= "9" else char for char in text)


def _groups(value: str, sizes: Sequence[int]) -> list[str]:
    """``value`` cut into groups of ``sizes`` (what is left after the last size is one more group)."""
    groups, start = [], 0
    for size in sizes:
        if start >= len(value):
            break
        groups.append(value[start : start + size])
        start += size
    if start < len(value):
        groups.append(value[start:])
    return groups
