"""The packaged data files, and how a data file named by a setting replaces one of them."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from ..settings import ConfigError


def read_toml(path: str | Path | None, packaged: str, setting: str) -> tuple[dict[str, Any], str]:
    """The TOML file at ``path`` (named by ``setting``), else the packaged ``packaged``, with the
    name to quote in errors about its contents. An unreadable or malformed file is a ``ConfigError``."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from None
        source = str(path)
    else:
        text = resources.files("callagent.data").joinpath(packaged).read_text(encoding="utf-8")
        source = f"callagent/data/{packaged}"
    try:
        return tomllib.loads(text), source
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from None
