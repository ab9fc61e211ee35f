"""The stage table: which ``nextStage`` name a workflow's ``<state>`` code stands for.

The table and the aliases are data (``callagent/data/stages.toml``, or the file named by
``CALLAGENT_STAGES_FILE``), so operators can add photo/collection stages without code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import read_toml
from .settings import ConfigError


@dataclass(frozen=True, slots=True)
class Stage:
    code: str
    name: str
    terminal: bool = False


class StageTable:
    def __init__(self, stages: dict[str, Stage], aliases: dict[str, str]) -> None:
        self._stages = stages
        self._aliases = aliases

    def resolve(self, raw_code: str) -> Stage:
        """The stage for a raw tag code; aliases first, unknown codes pass through unnamed."""
        code = self._aliases.get(raw_code, raw_code)
        return self._stages.get(code) or Stage(code, "", False)

    def __contains__(self, code: str) -> bool:
        return code in self._stages

    @classmethod
    def load(cls, path: str | Path | None = None) -> StageTable:
        return cls.from_data(*read_toml(path, "stages.toml", "CALLAGENT_STAGES_FILE"))

    @classmethod
    def from_data(cls, data: dict[str, Any], source: str) -> StageTable:
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, dict) or not raw_stages:
            raise ConfigError(f"{source}: a non-empty [stages] table is required")
        stages: dict[str, Stage] = {}
        for code, entry in raw_stages.items():
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{source}: stage {code!r} needs a string `name`")
            stages[code] = Stage(code, entry["name"], bool(entry.get("terminal", False)))
        aliases = data.get("aliases", {})
        if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
            raise ConfigError(f"{source}: [aliases] must map codes to codes")
        return cls(stages, dict(aliases))
