"""TOML tables read with their place in the file, so every mistake names the file and the key.

The call script and the phone-speech vocabulary are both read through ``Table``: each accessor
checks the type it expects and raises ``ValueError`` with ``file: table.key: what is wrong``.
"""

from __future__ import annotations

import re
import string
import tomllib
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .script import TEMPLATE_FIELDS


def read_toml(source: Path | Traversable, what: str) -> dict[str, Any]:
    """Parsed TOML, or ``ValueError`` saying why not (``what``: "call script", ...)."""
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} {source}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from exc


_STATE_CODE = re.compile(r"[0-9]{4}")


class Table:
    """A TOML table being read, knowing its place in the file for error messages."""

    def __init__(self, data: Any, where: str, source: str, what: str = "call script") -> None:
        self.where = where
        self.source = source
        self.what = what
        if not isinstance(data, dict):
            raise self.error("", "must be a table")
        self.data: dict[str, Any] = data

    def error(self, key: str, message: str) -> ValueError:
        place = f"{self.where}.{key}" if key and self.where else key or self.where or "top level"
        return ValueError(f"{self.what} {self.source}: {place}: {message}")

    def allow(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                raise self.error(key, f"unknown key (allowed here: {', '.join(keys)})")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return value

    def template(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise self.error(key, f"{exc} (write a literal brace as {{{{ or }}}})") from exc
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in TEMPLATE_FIELDS or spec or conversion:
                fields = ", ".join(f"{{{field}}}" for field in sorted(TEMPLATE_FIELDS))
                raise self.error(key, f"unknown placeholder {{{name}}} (known: {fields})")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "must be an integer")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return value

    def texts(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        if required and not value:
            raise self.error(key, "must not be empty")
        return tuple(value)

    def table(self, key: str, *, required: bool = False) -> Table:
        if key not in self.data and required:
            raise self.error(key, "is required")
        return Table(self.data.get(key, {}), f"{self.where}.{key}" if self.where else key, self.source, self.what)

    def tables(self, key: str) -> list[Table]:
        value = self.data.get(key, [])
        if isinstance(value, dict):
            return [self.table(key)]
        if not isinstance(value, list):
            raise self.error(key, "must be a table or an array of tables ([[...]])")
        return [Table(item, f"{self.where}.{key}[{index}]", self.source, self.what) for index, item in enumerate(value)]

    def children(self) -> list[tuple[str, Table]]:
        return [(name, self.table(name)) for name in self.data]

    def state(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        if not _STATE_CODE.fullmatch(value):
            raise self.error(key, f"{value!r} is not a four-digit stage code")
        return value
