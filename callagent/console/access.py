"""Who may open the console: its own keys, separate from the gateway's API keys.

``CALLAGENT_CONSOLE_KEYS`` is a comma-separated list; an entry ``name:key`` names the operator
that key belongs to (the name goes into the log of every action taken with it), a bare key is
logged as ``key-N`` (its position). With no console keys the console is open only when the
server listens on loopback (a developer's machine); otherwise it does not exist (404).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from ..settings import Settings

OPERATOR = web.RequestKey("console_operator", str)  # who made a console request
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
LOCAL_OPERATOR = "local"


@dataclass(frozen=True, slots=True)
class ConsoleAccess:
    enabled: bool
    keys: tuple[tuple[str, bytes], ...]  # (operator name, key)

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleAccess:
        keys = []
        for n, entry in enumerate(settings.console_keys, 1):
            name, sep, key = entry.value.partition(":")
            keys.append((name, key.encode()) if sep and name and key else (f"key-{n}", entry.value.encode()))
        return cls(bool(keys) or settings.host in LOOPBACK, tuple(keys))

    def operator(self, token: str) -> str | None:
        """The operator a key belongs to; None if it is no console key."""
        if not self.keys:
            return LOCAL_OPERATOR if self.enabled else None
        given = token.strip().encode()
        # Compare against every key without stopping early, in constant time per key.
        matches = [name for name, key in self.keys if hmac.compare_digest(given, key)]
        return matches[0] if matches and given else None
