"""``memory://``: everything in dicts, gone with the process. For quick runs and demos."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import TurnRecord
from .local import ProcessLocalLeases


class MemoryStore(ProcessLocalLeases):
    def __init__(self) -> None:
        super().__init__()
        self._variables: dict[str, dict[str, Any]] = {}
        self._turns: dict[str, dict[str, TurnRecord]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def session_exists(self, session_id: str) -> bool:
        return session_id in self._variables

    async def get_variables(self, session_id: str) -> dict[str, Any]:
        return dict(self._variables.get(session_id, ()))

    async def set_variables(self, session_id: str, values: Mapping[str, Any]) -> None:
        self._variables.setdefault(session_id, {}).update(values)

    async def delete_variables(self, session_id: str, keys: list[str]) -> None:
        variables = self._variables.get(session_id, {})
        for key in keys:
            variables.pop(key, None)

    async def delete_session(self, session_id: str) -> None:
        self._variables.pop(session_id, None)
        self._turns.pop(session_id, None)

    async def save_turn(self, record: TurnRecord) -> None:
        self._variables.setdefault(record.session_id, {})
        self._turns.setdefault(record.session_id, {})[record.turn_id] = record.copy()

    async def turns(self, session_id: str) -> list[TurnRecord]:
        return [t.copy() for t in self._turns.get(session_id, {}).values()]

    async def last_turn(self, session_id: str) -> TurnRecord | None:
        for record in reversed(self._turns.get(session_id, {}).values()):
            if not record.deleted:
                return record.copy()
        return None
