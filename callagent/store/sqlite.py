"""``sqlite:///path``: the embedded default store, one process, survives restarts.

All SQLite work runs on one dedicated thread so the event loop never blocks on disk.
Writes are queued and committed in batches: every write that arrives while a commit is in
progress joins the next transaction, so a thousand concurrent turns cost a few commits, not
a thousand. Callers still await their own write, which is durable once it returns (WAL,
``synchronous=NORMAL``: survives a killed process; a power cut may lose the last commits).

Every operation has a deadline (``timeout``): a stalled disk makes callers fail with
``StoreUnavailable`` in time instead of hanging them. Writes share one watchdog timer, not one
timer each. A write whose caller gave up before its batch started is dropped; one already
being committed may still land.

Variables are one row per (session, key), so concurrent writes of different keys never
overwrite each other. They are cached in memory, since this process is their only writer;
the cache changes only after the write committed, so a refused write is never read back.
Transcript rows are keyed by (session, turn id): two sessions may use the same turn id.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    variables  BLOB NOT NULL DEFAULT '{}',  -- unused since variables have their own rows
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS variables (
    session_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    PRIMARY KEY (session_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS health (
    id         INTEGER PRIMARY KEY,
    checked_at REAL NOT NULL
);
"""
_TURNS = """
CREATE TABLE IF NOT EXISTS turns (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    turn_id    TEXT NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    record     BLOB NOT NULL,
    UNIQUE (session_id, turn_id)
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, seq);
"""

_CACHE_SIZE = 50_000
_BATCH = 512


def sqlite_path(url: str) -> Path:
    """SQLAlchemy's convention: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute."""
    return Path(url.removeprefix("sqlite:///"))


@dataclass(slots=True)
class _Write:
    op: Write
    done: asyncio.Future[None]
    committed: Callable[[], None] | None  # runs on the loop once the write is in the database
    queued_at: float  # loop time


class SQLiteStore(ProcessLocalLeases):
    def __init__(self, path: str | Path, *, timeout: float = 2.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.timeout = timeout
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="callagent-sqlite")
        self._writes: asyncio.Queue[_Write] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # Writes not answered yet, oldest first, and the one timer that fails those past the
        # deadline (a timer per write would cost every turn one).
        self._unanswered: deque[_Write] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._variables: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._db = await self._run(self._connect)
        self._inode = self.path.stat().st_ino
        self._writer = asyncio.create_task(self._write_batches(), name="sqlite-writer")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        _migrate(db)
        db.executescript(_TURNS)
        return db

    async def close(self) -> None:
        if self._writer:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._writes.join()
            except TimeoutError:
                pass  # a stalled disk: what is still queued is lost, as it would be in a crash
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._unanswered:  # lost with a stalled disk: their callers must not wait on
            done = self._unanswered.popleft().done
            if not done.done():
                done.set_exception(StoreUnavailable("the session store is closed"))
        if self._db:
            db, self._db = self._db, None
            await self._run(db.close)
        self._thread.shutdown(wait=True)

    async def ping(self) -> None:
        """The database is still the file at ``path`` and takes a write."""
        try:
            same_file = self.path.stat().st_ino == self._inode
        except OSError:
            same_file = False
        if not same_file:
            raise StoreUnavailable(f"the session store file {self.path.name} was removed or replaced")
        now = time.time()
        await self._write(lambda db: db.execute("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)", (now,)))

    # -- plumbing --------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise StoreUnavailable("the session store is closed")
        try:
            async with asyncio.timeout(self.timeout):
                return await self._run(lambda: fn(db))
        except TimeoutError:
            raise self._stalled() from None
        except sqlite3.Error as e:
            raise StoreUnavailable(f"session store: {e}") from None

    async def _write(self, op: Write, committed: Callable[[], None] | None = None) -> None:
        """Queue a write for the next batch and wait until it is committed. A caller that gives
        up (cancelled, or failed by the watchdog) drops its write if its batch has not started."""
        if self._db is None:
            raise StoreUnavailable("the session store is closed")
        loop = asyncio.get_running_loop()
        write = _Write(op, loop.create_future(), committed, loop.time())
        self._writes.put_nowait(write)
        self._unanswered.append(write)
        if self._watchdog is None:
            self._watchdog = loop.call_at(write.queued_at + self.timeout, self._watch)
        await write.done

    def _watch(self) -> None:
        """The writes' one deadline: fail every write unanswered for ``timeout`` seconds."""
        self._watchdog = None
        unanswered = self._unanswered
        now = asyncio.get_running_loop().time()
        while unanswered and (unanswered[0].done.done() or now - unanswered[0].queued_at >= self.timeout):
            done = unanswered.popleft().done
            if not done.done():
                done.set_exception(self._stalled())
        if unanswered:
            self._watchdog = asyncio.get_running_loop().call_at(unanswered[0].queued_at + self.timeout, self._watch)

    def _stalled(self) -> StoreUnavailable:
        return StoreUnavailable(f"the session store did not answer within {self.timeout:g}s")

    async def _write_batches(self) -> None:
        while True:
            taken = [await self._writes.get()]
            while len(taken) < _BATCH and not self._writes.empty():
                taken.append(self._writes.get_nowait())
            batch = [w for w in taken if not w.done.done()]  # not those whose caller gave up
            errors: list[Exception | None] = []
            try:
                if batch:
                    errors = await self._run(functools.partial(self._commit, [w.op for w in batch]))
            except Exception as e:  # the whole transaction failed
                errors = [e] * len(batch)
            for write, error in zip(batch, errors, strict=True):
                if error is None and write.committed is not None:
                    write.committed()
                if not write.done.done():
                    if error is None:
                        write.done.set_result(None)
                    else:
                        write.done.set_exception(StoreUnavailable(f"session store: {error}"))
            for _ in taken:
                self._writes.task_done()
            while self._unanswered and self._unanswered[0].done.done():
                self._unanswered.popleft()

    def _commit(self, ops: list[Write]) -> list[Exception | None]:
        assert self._db is not None
        db = self._db
        errors: list[Exception | None] = []
        db.execute("BEGIN")
        try:
            for op in ops:
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

        def load(db: sqlite3.Connection) -> list[tuple[str, bytes]] | None:
            if db.execute("SELECT 1 FROM sessions WHERE session_id=?", (session_id,)).fetchone() is None:
                return None
            return db.execute("SELECT key, value FROM variables WHERE session_id=?", (session_id,)).fetchall()

        rows = await self._read(load)
        if rows is None:
            return None
        # Reads and commits run in order on one thread, and their results reach the loop in that
        # order: a write committed after this read updates the cache after it is filled here.
        loaded = {key: orjson.loads(value) for key, value in rows}
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
        values = dict(values)
        rows = [(session_id, key, orjson.dumps(value)) for key, value in values.items()]
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            _touch_session(db, session_id, now)
            db.executemany(
                "INSERT INTO variables (session_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (session_id, key) DO UPDATE SET value=excluded.value",
                rows,
            )

        def committed() -> None:
            cached = self._variables.get(session_id)
            if cached is not None:
                cached.update(values)

        await self._write(write, committed)

    async def delete_variables(self, session_id: str, keys: list[str]) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM variables WHERE session_id=? AND key=?", [(session_id, k) for k in keys])

        def committed() -> None:
            cached = self._variables.get(session_id)
            for key in keys if cached is not None else ():
                cached.pop(key, None)  # type: ignore[union-attr]

        if keys:
            await self._write(write, committed)

    async def delete_session(self, session_id: str) -> None:
        self._variables.pop(session_id, None)

        def delete(db: sqlite3.Connection) -> None:
            for table in ("sessions", "variables", "turns"):
                db.execute(f"DELETE FROM {table} WHERE session_id=?", (session_id,))

        def committed() -> None:
            self._variables.pop(session_id, None)  # a read may have cached it meanwhile

        await self._write(delete, committed)

    # -- transcript ------------------------------------------------------------------------

    async def save_turn(self, record: TurnRecord) -> None:
        row = (record.session_id, record.turn_id, int(record.deleted), record.to_json())
        now = time.time()

        def save(db: sqlite3.Connection) -> None:
            _touch_session(db, record.session_id, now)
            db.execute(
                "INSERT INTO turns (session_id, turn_id, deleted, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (session_id, turn_id) DO UPDATE SET deleted=excluded.deleted, record=excluded.record",
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


def _touch_session(db: sqlite3.Connection, session_id: str, now: float) -> None:
    db.execute(
        "INSERT INTO sessions (session_id, variables, updated_at) VALUES (?, '{}', ?) "
        "ON CONFLICT (session_id) DO UPDATE SET updated_at=excluded.updated_at",
        (session_id, now),
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database written by an earlier version to this layout, in one transaction:
    whole-session variable blobs become rows; turn ids become unique per session only."""
    db.execute("BEGIN")
    try:
        for session_id, blob in db.execute("SELECT session_id, variables FROM sessions WHERE variables != '{}'"):
            rows = [(session_id, k, orjson.dumps(v)) for k, v in orjson.loads(blob).items()]
            db.executemany("INSERT OR IGNORE INTO variables (session_id, key, value) VALUES (?, ?, ?)", rows)
        db.execute("UPDATE sessions SET variables='{}' WHERE variables != '{}'")
        old = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='turns'").fetchone()
        if old is not None and "UNIQUE (session_id, turn_id)" not in old[0]:
            db.execute("ALTER TABLE turns RENAME TO turns_before_migration")
            db.execute("DROP INDEX IF EXISTS turns_by_session")
            for statement in _TURNS.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO turns (seq, session_id, turn_id, deleted, record) "
                "SELECT seq, session_id, turn_id, deleted, record FROM turns_before_migration"
            )
            db.execute("DROP TABLE turns_before_migration")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
