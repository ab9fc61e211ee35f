"""``sqlite:///path``: the embedded default store, one process, survives restarts.

All SQLite work runs on one dedicated thread so the event loop never blocks on disk.
Writes are queued and committed in batches: every write that arrives while a commit is in
progress joins the next transaction, so a thousand concurrent turns cost a few commits, not
a thousand. Callers still await their own write, which is durable once it returns (WAL,
``synchronous=NORMAL``: survives a killed process; a power cut may lose the last commits).
Session variables are cached in memory (write-through), since this process is their only
writer.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..errors import StoreUnavailable
from .base import TurnRecord
from .local import ProcessLocalLeases

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], object]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    variables  BLOB NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    turn_id    TEXT NOT NULL UNIQUE,
    deleted    INTEGER NOT NULL DEFAULT 0,
    record     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, seq);
"""

_CACHE_SIZE = 50_000
_BATCH = 512


def sqlite_path(url: str) -> Path:
    """SQLAlchemy's convention: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute."""
    return Path(url.removeprefix("sqlite:///"))


class SQLiteStore(ProcessLocalLeases):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="callagent-sqlite")
        self._writes: asyncio.Queue[tuple[Write, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._variables: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._db = await self._run(self._connect)
        self._writer = asyncio.create_task(self._write_batches(), name="sqlite-writer")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        return db

    async def close(self) -> None:
        if self._writer:
            await self._writes.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._db:
            db, self._db = self._db, None
            await self._run(db.close)
        self._thread.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda db: db.execute("SELECT 1").fetchone())

    # -- plumbing --------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise StoreUnavailable("the session store is closed")
        try:
            return await self._run(lambda: fn(db))
        except sqlite3.Error as e:
            raise StoreUnavailable(f"session store: {e}") from e

    async def _write(self, op: Write) -> None:
        if self._db is None:
            raise StoreUnavailable("the session store is closed")
        done = asyncio.get_running_loop().create_future()
        self._writes.put_nowait((op, done))
        await done

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._writes.get()]
            while len(batch) < _BATCH and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                errors = await self._run(functools.partial(self._commit, batch))
            except Exception as e:  # the whole transaction failed
                errors = [e] * len(batch)
            for (_, done), error in zip(batch, errors, strict=True):
                if not done.done():
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(StoreUnavailable(f"session store: {error}"))
                self._writes.task_done()

    def _commit(self, batch: list[tuple[Write, asyncio.Future[None]]]) -> list[Exception | None]:
        assert self._db is not None
        db = self._db
        errors: list[Exception | None] = []
        db.execute("BEGIN")
        try:
            for op, _ in batch:
                db.execute("SAVEPOINT op")
                try:
                    op(db)
                    db.execute("RELEASE op")
                    errors.append(None)
                except sqlite3.Error as e:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    errors.append(e)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return errors

    # -- variables -------------------------------------------------------------------------

    async def _cached_variables(self, session_id: str) -> dict[str, Any] | None:
        cached = self._variables.get(session_id)
        if cached is not None:
            self._variables.move_to_end(session_id)
            return cached
        row = await self._read(
            lambda db: db.execute("SELECT variables FROM sessions WHERE session_id=?", (session_id,)).fetchone()
        )
        if row is None:
            return None
        loaded: dict[str, Any] = orjson.loads(row[0])
        self._remember(session_id, loaded)
        return loaded

    def _remember(self, session_id: str, variables: dict[str, Any]) -> None:
        self._variables[session_id] = variables
        self._variables.move_to_end(session_id)
        if len(self._variables) > _CACHE_SIZE:
            self._variables.popitem(last=False)

    async def session_exists(self, session_id: str) -> bool:
        return await self._cached_variables(session_id) is not None

    async def get_variables(self, session_id: str) -> dict[str, Any]:
        return dict(await self._cached_variables(session_id) or ())

    async def set_variables(self, session_id: str, values: Mapping[str, Any]) -> None:
        merged = dict(await self._cached_variables(session_id) or ())
        merged.update(values)
        await self._store_variables(session_id, merged)

    async def delete_variables(self, session_id: str, keys: list[str]) -> None:
        variables = dict(await self._cached_variables(session_id) or ())
        for key in keys:
            variables.pop(key, None)
        await self._store_variables(session_id, variables)

    async def _store_variables(self, session_id: str, merged: dict[str, Any]) -> None:
        self._remember(session_id, merged)
        blob = orjson.dumps(merged)
        await self._write(
            lambda db: db.execute(
                "INSERT INTO sessions (session_id, variables, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET variables=excluded.variables, updated_at=excluded.updated_at",
                (session_id, blob, time.time()),
            )
        )

    async def delete_session(self, session_id: str) -> None:
        self._variables.pop(session_id, None)

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM sessions WHERE session_id=?", (session_id,))
            db.execute("DELETE FROM turns WHERE session_id=?", (session_id,))

        await self._write(delete)

    # -- transcript ------------------------------------------------------------------------

    async def save_turn(self, record: TurnRecord) -> None:
        blob = record.to_json()
        row = (record.session_id, record.turn_id, int(record.deleted), blob)
        session_known = await self._cached_variables(record.session_id) is not None
        if not session_known:
            self._remember(record.session_id, {})

        def save(db: sqlite3.Connection) -> None:
            if not session_known:
                db.execute(
                    "INSERT OR IGNORE INTO sessions (session_id, variables, updated_at) VALUES (?, '{}', ?)",
                    (record.session_id, time.time()),
                )
            db.execute(
                "INSERT INTO turns (session_id, turn_id, deleted, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (turn_id) DO UPDATE SET deleted=excluded.deleted, record=excluded.record",
                row,
            )

        await self._write(save)

    async def turns(self, session_id: str) -> list[TurnRecord]:
        rows = await self._read(
            lambda db: db.execute("SELECT record FROM turns WHERE session_id=? ORDER BY seq", (session_id,)).fetchall()
        )
        return [TurnRecord.from_dict(orjson.loads(r[0])) for r in rows]

    async def last_turn(self, session_id: str) -> TurnRecord | None:
        row = await self._read(
            lambda db: db.execute(
                "SELECT record FROM turns WHERE session_id=? AND deleted=0 ORDER BY seq DESC LIMIT 1", (session_id,)
            ).fetchone()
        )
        return TurnRecord.from_dict(orjson.loads(row[0])) if row else None
