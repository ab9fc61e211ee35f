"""``memory://``: everything in dicts, gone with the process. For quick runs and demos.

Bounded, so a long-running process does not grow (and slow down: every full garbage
collection walks what it holds): it keeps the ``MAX_SESSIONS`` sessions most recently written
to and the last ``MAX_TURNS`` transcript rows of each; the least recently written session
(its variables and its transcript) is forgotten first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import TurnRecord
from .local import ProcessLocalLeases

MAX_SESSIONS = 10_000
MAX_TURNS = 1_000


class MemoryStore(ProcessLocalLeases):
    def __init__(self) -> None:
        super().__init__()
        # Least recently written first; every session with turns has variables.
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
        self._written(session_id).update(values)

    async def delete_variables(self, session_id: str, keys: list[str]) -> None:
        variables = self._variables.get(session_id, {})
        for key in keys:
            variables.pop(key, None)

    async def delete_session(self, session_id: str) -> None:
        self._variables.pop(session_id, None)
        self._turns.pop(session_id, None)

    async def save_turn(self, record: TurnRecord) -> None:
        sid = record.session_id
        self._written(sid)
        turns = self._turns.setdefault(sid, {})
        turns[record.turn_id] = record.copy()
        if len(turns) > MAX_TURNS:
            del turns[next(iter(turns))]

    async def turns(self, session_id: str) -> list[TurnRecord]:
        return [t.copy() for t in self._turns.get(session_id, {}).values()]

    async def last_turn(self, session_id: str) -> TurnRecord | None:
        for record in reversed(self._turns.get(session_id, {}).values()):
            if not record.deleted:
                return record.copy()
        return None

    def _written(self, session_id: str) -> dict[str, Any]:
        """The session's variables, the session now the most recently written; past
        ``MAX_SESSIONS`` the least recently written one is forgotten."""
        variables = self._variables.pop(session_id, None)
        if variables is None:
            variables = {}
            if len(self._variables) >= MAX_SESSIONS:
                oldest = next(iter(self._variables))
                del self._variables[oldest]
                self._turns.pop(oldest, None)
        self._variables[session_id] = variables
        return variables
