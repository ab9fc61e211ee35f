"""Session stores; ``create_store(url)`` picks the implementation from ``CALLAGENT_STORE``."""

from __future__ import annotations

from .base import Store, TurnRecord
from .memory import MemoryStore
from .sqlite import SQLiteStore, sqlite_path

__all__ = ["MemoryStore", "SQLiteStore", "Store", "TurnRecord", "create_store"]


def create_store(url: str, *, transcript_ttl: int = 7 * 24 * 3600, timeout: float = 2.0) -> Store:
    """``timeout``: the deadline of every store operation (a stalled disk or Redis fails fast)."""
    if url.startswith("memory://"):
        return MemoryStore()
    if url.startswith("sqlite:///"):
        return SQLiteStore(sqlite_path(url), timeout=timeout)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore

        return RedisStore(url, transcript_ttl=transcript_ttl, timeout=timeout)
    raise ValueError(f"unsupported store URL {url!r}")
