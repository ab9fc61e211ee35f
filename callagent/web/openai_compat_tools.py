"""Stage codes as tool calls: which function a voice platform offers stands for which stage.

A platform that speaks the OpenAI protocol acts on function calls, not on callagent's stage
codes: LiveKit hangs up on ``end_call``, Vapi on ``endCall``, others transfer on
``transfer_call`` or ``transfer_to_human``. The mapping is data (``callagent/data/tools.toml``,
or the file named by ``CALLAGENT_TOOLS_FILE``): per action, the stage codes that trigger it, the
name patterns of the functions that perform it, values for their required parameters, and what
to answer once the platform sends the tool's result back.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import read_toml
from ..settings import ConfigError
from ..stages import Stage


@dataclass(frozen=True, slots=True)
class OfferedTool:
    """A function the request's ``tools`` offers: its name and JSON-schema parameters."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolAction:
    name: str
    stages: frozenset[str]
    patterns: tuple[str, ...]
    arguments: Mapping[str, Any] = field(default_factory=dict)
    after: str = ""

    def matches(self, tool_name: str) -> bool:
        return any(fnmatch.fnmatchcase(tool_name.lower(), p) for p in self.patterns)

    def call_arguments(self, tool: OfferedTool, stage: Stage, session_id: str) -> dict[str, Any]:
        """The call's arguments: the stage, plus the tool's required parameters we can fill."""
        args: dict[str, Any] = {"stageCode": stage.code, "stage": stage.name}
        required = tool.parameters.get("required")
        for param in required if isinstance(required, list) else ():
            value = self.arguments.get(param)
            if isinstance(value, str):
                value = value.format(stage_code=stage.code, stage=stage.name, session_id=session_id)
            if value is not None:
                args[param] = value
        return args


class ToolTable:
    def __init__(self, actions: Sequence[ToolAction]) -> None:
        self.actions = tuple(actions)

    def pick(self, stage_code: str, offered: Sequence[OfferedTool]) -> tuple[ToolAction, OfferedTool] | None:
        """The action a stage code triggers and the offered tool that performs it, if any."""
        for action in self.actions:
            if stage_code not in action.stages:
                continue
            for pattern in action.patterns:
                for tool in offered:
                    if fnmatch.fnmatchcase(tool.name.lower(), pattern):
                        return action, tool
        return None

    def action_named(self, tool_name: str) -> ToolAction | None:
        """The action a called tool performed (to answer the platform's follow-up request)."""
        return next((a for a in self.actions if a.matches(tool_name)), None)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ToolTable:
        return cls.from_data(*read_toml(path, "tools.toml", "CALLAGENT_TOOLS_FILE"))

    @classmethod
    def from_data(cls, data: dict[str, Any], source: str) -> ToolTable:
        raw = data.get("actions", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [actions] must be a table of actions")
        return cls([_action(source, name, entry) for name, entry in raw.items()])


def _action(source: str, name: str, entry: Any) -> ToolAction:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"{source}: actions.{name}: {why}")

    if not isinstance(entry, dict):
        raise fail("must be a table")
    stages, patterns = entry.get("stages"), entry.get("patterns")
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise fail("`stages` must be a list of stage codes")
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise fail("`patterns` must be a non-empty list of name patterns")
    arguments = entry.get("arguments", {})
    if not isinstance(arguments, dict):
        raise fail("`arguments` must be a table")
    for key, value in arguments.items():
        try:
            if isinstance(value, str):
                value.format(stage_code="", stage="", session_id="")
        except (KeyError, IndexError, ValueError):
            raise fail(f"arguments.{key}: only {{stage_code}}, {{stage}} and {{session_id}} may be filled in") from None
    after = entry.get("after", "")
    if not isinstance(after, str):
        raise fail("`after` must be a string")
    unknown = set(entry) - {"stages", "patterns", "arguments", "after"}
    if unknown:
        raise fail(f"unknown keys {', '.join(sorted(unknown))}")
    return ToolAction(name, frozenset(stages), tuple(p.lower() for p in patterns), dict(arguments), after)
