"""``redis://host:port/db``: the store shared by several callagent processes.

Processes behind a load balancer share everything about a session through Redis, so any of
them can serve any request of any call. Key layout (``{sid}`` is a cluster hash tag: one
session's keys live together, which the Lua scripts below need)::

    callagent:{sid}:vars    hash    variable -> JSON value (types kept)
    callagent:{sid}:turns   hash    turn id -> transcript row (JSON)
    callagent:{sid}:order   list    turn ids, in the order they were first saved
    callagent:{sid}:lease   string  the turn id owning the session's lease, with a PX expiry
    callagent:cancel        channel {"session", "spokenText", "turnId", "origin"}

Every write refreshes the expiry of all the session's keys to ``transcript_ttl`` seconds,
so a session disappears that long after its last activity. The lease is taken with
``SET NX PX`` and renewed or released by compare-and-set scripts: only its owner can. A
cancel is published on one channel that every process listens to through one tracked task;
the task hands each message from another process to the ``on_cancel`` callbacks, and
re-subscribes by itself (with backoff) when Redis goes away and comes back.

Every Redis failure surfaces as ``StoreUnavailable`` (HTTP 503 ``store_unavailable``).
Timeouts are short and a command is retried once, on a fresh connection, only when the
connection broke: a stale connection after a Redis restart heals, a dead Redis fails fast.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..errors import StoreUnavailable
from .base import CancelCallback, TurnRecord

log = structlog.get_logger(component="callagent.store.redis")
T = TypeVar("T")

CANCEL_CHANNEL = "callagent:cancel"
HEALTH_CHECK_INTERVAL = 15  # seconds idle before a pooled connection is checked with PING
RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX = 0.05, 0.5  # pause between attempts to re-subscribe

# Taking a lease the caller already owns succeeds (and refreshes it): a command retried after
# a lost reply must not lock its own turn out. ARGV[3], when not empty, is the turn this one
# follows on the same instance: its lease is taken over (its release may have been lost).
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or (ARGV[3] ~= '' and holder == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: vars, turns, order. A new turn id joins the order; a known one keeps its place.
_SAVE_TURN = """
if redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) == 1 then redis.call('RPUSH', KEYS[3], ARGV[1]) end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[3]) end
return 1
"""
# KEYS: turns, order. The newest row whose upstream records were not deleted.
_LAST_TURN = """
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #ids, 1, -1 do
  local row = redis.call('HGET', KEYS[1], ids[i])
  if row and not cjson.decode(row)['deleted'] then return row end
end
return false
"""


def _key(session_id: str, part: str) -> str:
    return f"callagent:{{{session_id}}}:{part}"


class RedisStore:
    def __init__(self, url: str, *, transcript_ttl: int, timeout: float = 2.0) -> None:
        self._url = url
        self.timeout = timeout  # connect and read: a request that needs a hung Redis fails within about this
        self.transcript_ttl = transcript_ttl
        self._redis: Redis | None = None
        parts = urlsplit(url)
        self._where = f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"  # for messages: no password
        self._origin = uuid.uuid4().hex  # this process, so it ignores the cancels it sends
        self._callbacks: list[CancelCallback] = []
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._scripts: dict[str, AsyncScript] = {}
        self._lease_tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"RedisStore({self._where})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the connection pool and start listening for cancels. Redis need not be up yet."""
        self._redis = Redis.from_url(
            self._url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            socket_keepalive=True,
            health_check_interval=HEALTH_CHECK_INTERVAL,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, (RedisConnectionError,)),
        )
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("save_turn", _SAVE_TURN),
                ("last_turn", _LAST_TURN),
            )
        }
        self._listener = asyncio.create_task(self._listen(), name="redis-cancel-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._lease_tasks:
            await asyncio.wait(self._lease_tasks)
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()

    async def ping(self) -> None:
        """Redis answers, and this process hears cancels sent by the others."""
        with self._reachable() as redis:
            await redis.ping()
        try:
            async with asyncio.timeout(self.timeout):  # just opened, or re-subscribing: a moment
                await self._subscribed.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"the session store (Redis at {self._where}) cancel channel is not subscribed yet"
            ) from None

    @contextmanager
    def _reachable(self) -> Iterator[Redis]:
        if self._redis is None:
            raise StoreUnavailable("the session store is closed")
        try:
            yield self._redis
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"the session store (Redis at {self._where}) is unavailable: {e}") from e

    # -- variables -------------------------------------------------------------------------

    async def session_exists(self, session_id: str) -> bool:
        # A session whose first turn is still running exists too: it can be cancelled.
        keys = (_key(session_id, "vars"), _key(session_id, "order"), _key(session_id, "lease"))
        with self._reachable() as redis:
            return bool(await redis.exists(*keys))

    async def get_variables(self, session_id: str) -> dict[str, Any]:
        with self._reachable() as redis:
            raw: dict[bytes, bytes] = await redis.hgetall(_key(session_id, "vars"))  # type: ignore[assignment,misc]
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def set_variables(self, session_id: str, values: Mapping[str, Any]) -> None:
        with self._reachable() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                if values:
                    pipe.hset(_key(session_id, "vars"), mapping={k: orjson.dumps(v) for k, v in values.items()})
                for part in ("vars", "turns", "order"):
                    pipe.expire(_key(session_id, part), self.transcript_ttl)
                await pipe.execute()

    async def delete_variables(self, session_id: str, keys: list[str]) -> None:
        if keys:
            with self._reachable() as redis:
                await redis.hdel(_key(session_id, "vars"), *keys)

    async def delete_session(self, session_id: str) -> None:
        with self._reachable() as redis:
            await redis.delete(*(_key(session_id, part) for part in ("vars", "turns", "order")))

    # -- transcript ------------------------------------------------------------------------

    async def save_turn(self, record: TurnRecord) -> None:
        keys = [_key(record.session_id, part) for part in ("vars", "turns", "order")]
        args: list[str | bytes | int] = [record.turn_id, record.to_json(), self.transcript_ttl]
        with self._reachable():
            await self._scripts["save_turn"](keys=keys, args=args)

    async def turns(self, session_id: str) -> list[TurnRecord]:
        with self._reachable() as redis:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.lrange(_key(session_id, "order"), 0, -1)
                pipe.hgetall(_key(session_id, "turns"))
                order, rows = await pipe.execute()
        return [TurnRecord.from_dict(orjson.loads(rows[turn_id])) for turn_id in order if turn_id in rows]

    async def last_turn(self, session_id: str) -> TurnRecord | None:
        keys = [_key(session_id, "turns"), _key(session_id, "order")]
        with self._reachable():
            row = await self._scripts["last_turn"](keys=keys)
        return TurnRecord.from_dict(orjson.loads(row)) if row else None

    # -- lease -----------------------------------------------------------------------------
    #
    # A lease must never outlive its turn because a task was cancelled halfway through a
    # command (a barge-in while the turn is taking the lease, a gateway leaving during the
    # turn's cleanup): the command may reach Redis while its reply goes unread, and the
    # session would stay locked until the lease expired. So acquire and release run in
    # tracked tasks the caller's cancellation does not interrupt.

    async def acquire_lease(self, session_id: str, owner: str, ttl: float, replaces: str | None = None) -> bool:
        acquire = self._track(self._acquire(session_id, owner, ttl, replaces), f"acquire-lease-{owner}")
        try:
            return await asyncio.shield(acquire)
        except asyncio.CancelledError:
            self._track(self._give_back(acquire, session_id, owner), f"give-back-lease-{owner}")
            raise

    async def _acquire(self, session_id: str, owner: str, ttl: float, replaces: str | None) -> bool:
        args: list[str | int] = [owner, _ms(ttl), replaces or ""]
        with self._reachable():
            return bool(await self._scripts["acquire"](keys=[_key(session_id, "lease")], args=args))

    async def _give_back(self, acquire: asyncio.Task[bool], session_id: str, owner: str) -> None:
        """The caller of ``acquire`` was cancelled: if it got the lease, nobody else will release it."""
        with suppress(StoreUnavailable):
            if await acquire:
                await self._release(session_id, owner)

    async def renew_lease(self, session_id: str, owner: str, ttl: float) -> bool:
        with self._reachable():
            return bool(await self._scripts["renew"](keys=[_key(session_id, "lease")], args=[owner, _ms(ttl)]))

    async def renew_leases(self, leases: list[tuple[str, str]], ttl: float) -> list[bool]:
        with self._reachable() as redis:
            async with redis.pipeline(transaction=False) as pipe:
                for session_id, owner in leases:
                    await self._scripts["renew"](keys=[_key(session_id, "lease")], args=[owner, _ms(ttl)], client=pipe)
                return [bool(r) for r in await pipe.execute()]

    async def release_lease(self, session_id: str, owner: str) -> bool:
        """Never raises: it runs in a turn's ``finally``, and if Redis is gone the lease expires."""
        return await asyncio.shield(self._track(self._release(session_id, owner), f"release-lease-{owner}"))

    async def _release(self, session_id: str, owner: str) -> bool:
        try:
            with self._reachable():
                await self._scripts["release"](keys=[_key(session_id, "lease")], args=[owner])
            return True
        except StoreUnavailable as e:
            log.warning("lease_not_released", session_id=session_id, turn_id=owner, error=e.msg)
            return False

    def _track(self, operation: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(operation, name=name)
        self._lease_tasks.add(task)
        task.add_done_callback(self._lease_tasks.discard)
        return task

    async def lease_owner(self, session_id: str) -> str | None:
        with self._reachable() as redis:
            owner = await redis.get(_key(session_id, "lease"))
        return owner.decode() if isinstance(owner, bytes) else owner

    # -- cancellation ----------------------------------------------------------------------

    async def publish_cancel(self, session_id: str, spoken_text: str | None, turn_id: str | None = None) -> None:
        message = orjson.dumps(
            {"session": session_id, "spokenText": spoken_text, "turnId": turn_id, "origin": self._origin}
        )
        with self._reachable() as redis:
            await redis.publish(CANCEL_CHANNEL, message)

    def on_cancel(self, callback: CancelCallback) -> None:
        self._callbacks.append(callback)

    async def _listen(self) -> None:
        """Subscribe, hand every cancel to the callbacks; on any failure, back off and start over."""
        assert self._redis is not None
        pause, failing = RESUBSCRIBE_FIRST, False
        while True:
            pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCEL_CHANNEL)
                self._subscribed.set()
                if failing:
                    log.info("cancel_channel_subscribed", redis=self._where)
                pause, failing = RESUBSCRIBE_FIRST, False
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._dispatch(message["data"])
            except (RedisError, OSError) as e:
                if not failing:
                    log.warning("cancel_channel_unavailable", redis=self._where, error=str(e))
                failing = True
            except Exception:
                log.exception("cancel_listener_failed", redis=self._where)
                failing = True
            finally:
                self._subscribed.clear()
                with suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESUBSCRIBE_MAX)

    def _dispatch(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            session_id, spoken_text, turn_id = message["session"], message.get("spokenText"), message.get("turnId")
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.warning("cancel_message_malformed", data=data[:200])
            return
        if message.get("origin") == self._origin or not isinstance(session_id, str):
            return
        for callback in self._callbacks:
            try:
                callback(
                    session_id,
                    spoken_text if isinstance(spoken_text, str) else None,
                    turn_id if isinstance(turn_id, str) else None,
                )
            except Exception:
                log.exception("cancel_callback_failed", session_id=session_id)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
