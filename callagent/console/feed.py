"""The call feed: every live call's events, pushed to the operator console's viewers.

::

    TurnEngine ──TurnObserver──▶ CallFeed ──(Redis store: PUBLISH callagent:console)──▶ every
    instance's CallFeed ──▶ its viewers (one bounded queue each) ──▶ SSE ``/console/api/feed``

Nothing runs per turn while nobody watches: the engine holds the feed as its observer only
while this instance has a viewer, or another instance sharing the Redis store said in the
last ``WATCH_TTL`` seconds that it has one. Detaching is lazy: the first turn that starts
after the last viewer left finds nobody watching and unhooks the feed.

Messages are small dicts (``type``: ``turn`` a turn started, ``stage``, ``delta``, ``end``,
``action`` an operator stepped in, ``call`` a call's summary, ``hello`` the first message a
viewer gets). Each is encoded once; what is produced in one event-loop iteration is joined
into one chunk, and the same chunk is queued for every viewer (so ten viewers cost ten queue
puts and ten writes per burst, not per message). A viewer whose queue is full (it reads
slower than calls talk) is dropped, never waited for. With the
Redis store the observer only appends to a batch that one publisher task sends, so a turn
never awaits Redis for the console; every instance (the sender too) fans out what it hears
on the channel, so all viewers see the same order. Control messages on the same channel:
``watch`` (an instance has viewers: start observing) and ``sync`` (a viewer joined: every
instance re-sends the summaries of its calls, so the new page starts with the live calls).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import OrderedDict
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import structlog
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import CallagentError
from ..events import Done, Error, Event, StageCode, TextDelta
from ..metrics import Metrics
from ..stages import StageTable
from ..turns import Turn, TurnEngine

log = structlog.get_logger(component="callagent.console")

CHANNEL = "callagent:console"
WATCH_INTERVAL = 5.0  # an instance with viewers says so this often
WATCH_TTL = 15.0  # ... and the others observe their turns this long after hearing it
MAX_CALLS = 500  # call summaries kept per instance (the most recently active ones)
MAX_PENDING = 10_000  # messages waiting for the publisher; beyond that the console loses some
RETRY_PAUSE = 0.5
STORE_TIMEOUT = 2.0
REDIS_TIMEOUT = 2.0


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class CallSummary:
    """One row of the console's live-call list, as this instance knows it."""

    session: str
    instance: str
    state: str = "talking"  # talking | waiting | transferred | ended | failed
    stage: str = ""
    stageName: str = ""  # camelCase: these are the wire names
    utterance: str = ""
    turns: int = 0
    firstTextMs: float | None = None
    turnId: str = ""
    at: float = 0.0  # unix time of the last activity

    def message(self) -> dict[str, Any]:
        return {"type": "call", **asdict(self)}


class Viewer:
    """One open console page: a bounded queue of chunks of encoded SSE frames."""

    def __init__(self, who: str, size: int) -> None:
        self.who = who
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        self.dropped = False
        self.task: asyncio.Task[Any] | None = None  # the handler streaming to it, for shutdown

    def offer(self, frame: bytes) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped = True  # its handler sees it on its next read and closes the stream


def sse_frame(message: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(message) + b"\n\n"


class CallFeed:
    def __init__(
        self, engine: TurnEngine, stages: StageTable, metrics: Metrics, *, redis_url: str | None, buffer: int
    ) -> None:
        self.engine = engine
        self.stages = stages
        self.instance = instance_name()  # shown to viewers
        self._origin = uuid.uuid4().hex  # tells this feed's own Redis messages apart
        self.buffer = buffer
        self.viewers: set[Viewer] = set()
        self.calls: OrderedDict[str, CallSummary] = OrderedDict()
        self._redis_url = redis_url
        self._redis: Redis | None = None
        self._remote_until = 0.0
        self._pending: list[dict[str, Any]] = []  # for the Redis publisher
        self._outgoing: list[bytes] = []  # for the viewers, delivered at the end of the iteration
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.viewers_gauge = Gauge(
            "callagent_console_viewers", "Console pages following the call feed", registry=metrics.registry
        )
        self.dropped_viewers = Counter(
            "callagent_console_viewers_dropped",
            "Console viewers dropped for reading too slowly",
            registry=metrics.registry,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis_url is not None:
            # As the store's client: a hung Redis fails a publish in seconds instead of holding it.
            self._redis = Redis.from_url(
                self._redis_url,
                socket_connect_timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
                socket_keepalive=True,
                health_check_interval=15,
            )
            self._spawn(self._listen(), "console-feed-listener")
            self._spawn(self._publish_loop(), "console-feed-publisher")

    async def close(self) -> None:
        self.engine.observer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- viewers ---------------------------------------------------------------------------

    def join(self, who: str) -> Viewer:
        viewer = Viewer(who, self.buffer)
        self.viewers.add(viewer)
        self.viewers_gauge.set(len(self.viewers))
        viewer.offer(sse_frame({"type": "hello", "instance": self.instance, "who": who, "at": time.time()}))
        self._attach()
        if self._redis is None:
            for summary in self.calls.values():
                viewer.offer(sse_frame(summary.message()))
        else:
            self._send({"type": "watch"}, {"type": "sync"})
            if self._heartbeat is None:
                self._heartbeat = self._spawn(self._say_watching(), "console-feed-heartbeat")
        return viewer

    def disconnect_all(self) -> None:
        """Shutdown: end every viewer's stream (the pages reconnect to another instance)."""
        for viewer in list(self.viewers):
            if viewer.task is not None:
                viewer.task.cancel()

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        self.viewers_gauge.set(len(self.viewers))
        if viewer.dropped:
            self.dropped_viewers.inc()
            log.warning("console_viewer_dropped", who=viewer.who, reason="the page reads slower than calls talk")
        if not self.viewers and self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    @property
    def watched(self) -> bool:
        return bool(self.viewers) or asyncio.get_running_loop().time() < self._remote_until

    def _attach(self) -> None:
        """Start observing turns, the ones already running included."""
        if self.engine.observer is self:
            return
        self.engine.observer = self
        for turn in self.engine.running_turns():
            if turn.observer is None:
                turn.observer = self
                self.turn_started(turn)

    # -- the TurnObserver the engine calls -------------------------------------------------

    def turn_started(self, turn: Turn) -> None:
        if not self.watched:
            self.engine.observer = None  # nobody watches any more: unhook until someone does
            self.calls.clear()
            return
        summary = self._summary(turn.session_id)
        summary.state, summary.utterance, summary.turnId = "talking", turn.request.text, turn.id
        summary.turns += 1
        self._send(
            {
                "type": "turn",
                "session": turn.session_id,
                "turnId": turn.id,
                "text": turn.request.text,
                "transport": turn.request.transport,
                "instance": self.instance,
                "at": summary.at,
            },
            summary.message(),
        )

    def turn_event(self, turn: Turn, event: Event) -> None:
        if self.engine.observer is not self:
            return
        sid = turn.session_id
        if isinstance(event, TextDelta):
            self._send({"type": "delta", "session": sid, "turnId": turn.id, "text": event.text})
            return
        summary = self._summary(sid)
        if isinstance(event, StageCode):
            summary.stage, summary.stageName = event.code, event.name
            self._send({"type": "stage", "session": sid, "turnId": turn.id, "code": event.code, "name": event.name})
            return
        message: dict[str, Any] = {"type": "end", "session": sid, "turnId": turn.id, "spokenText": turn.spoken_text}
        if isinstance(event, Done):
            message.update(status=event.status, latency=event.latency)
            summary.firstTextMs = event.latency.get("first_text_ms")
            summary.state = self._state_after(summary.stage)
        elif isinstance(event, Error):
            message.update(status="failed", error={"type": event.error.type, "msg": event.error.msg})
            summary.state = "failed"
        self._send(message, summary.message())

    def _state_after(self, stage: str) -> str:
        if not stage or not self.stages.resolve(stage).terminal:
            return "waiting"
        return "ended" if stage == "0000" else "transferred"

    def _summary(self, session_id: str) -> CallSummary:
        summary = self.calls.get(session_id)
        now = time.time()
        if summary is None:
            summary = self.calls[session_id] = CallSummary(session_id, self.instance)
            if len(self.calls) > MAX_CALLS:
                self.calls.popitem(last=False)
            self._spawn(self._count_earlier_turns(summary, now), f"console-count-{session_id}")
        else:
            self.calls.move_to_end(session_id)
        summary.at = now
        return summary

    async def _count_earlier_turns(self, summary: CallSummary, since: float) -> None:
        """A call first seen mid-way: add the turns it had before to the ones seen since."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                rows = await self.engine.store.turns(summary.session)
        except (CallagentError, TimeoutError):
            return
        earlier = sum(1 for r in rows if r.received_at < since)
        if earlier:
            summary.turns += earlier
            self._send(summary.message())

    # -- operators stepping in -------------------------------------------------------------

    def action(self, session_id: str, action: str, who: str, **detail: Any) -> None:
        """An operator acted on a call: every viewer sees who did what."""
        messages: list[dict[str, Any]] = [
            {"type": "action", "session": session_id, "action": action, "who": who, "at": time.time(), **detail}
        ]
        if action == "end":
            summary = self.calls.pop(session_id, None) or CallSummary(session_id, self.instance)
            summary.state, summary.at = "ended", time.time()
            messages.append(summary.message())
        self._send(*messages)

    # -- delivery --------------------------------------------------------------------------

    def _send(self, *messages: dict[str, Any]) -> None:
        if self._redis is None:
            self._fan_out(messages)
        elif len(self._pending) < MAX_PENDING:
            self._pending.extend(messages)
            self._wake.set()

    def _fan_out(self, messages: Any) -> None:
        """Queue the messages for every viewer at the end of this loop iteration: what a turn
        (or a Redis batch) produces together reaches each viewer as one chunk."""
        frames = [sse_frame(m) for m in messages if m["type"] not in ("watch", "sync")]
        if not frames or not self.viewers:
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._deliver)
        self._outgoing.extend(frames)

    def _deliver(self) -> None:
        chunk, self._outgoing = b"".join(self._outgoing), []
        for viewer in self.viewers:
            viewer.offer(chunk)

    async def _publish_loop(self) -> None:
        """Send what the observer batched, one PUBLISH per batch."""
        assert self._redis is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await self._redis.publish(CHANNEL, orjson.dumps({"origin": self._origin, "messages": batch}))
            except (RedisError, OSError) as e:
                log.warning("console_feed_not_published", error=str(e), messages=len(batch))

    async def _say_watching(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self._send({"type": "watch"})

    async def _listen(self) -> None:
        """Hear every instance's messages (this one's too); re-subscribe after a Redis outage."""
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._heard(message["data"])
            except (RedisError, OSError) as e:
                log.warning("console_feed_unavailable", error=str(e))
            finally:
                with suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RETRY_PAUSE)

    def _heard(self, data: bytes) -> None:
        try:
            envelope = orjson.loads(data)
            origin, messages = envelope["origin"], envelope["messages"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.warning("console_feed_message_malformed")
            return
        for message in messages:
            kind = message.get("type")
            if kind == "watch" and origin != self._origin:
                self._remote_until = asyncio.get_running_loop().time() + WATCH_TTL
                self._attach()
            elif kind == "sync":
                self._send(*(summary.message() for summary in self.calls.values()))
        if self.viewers:
            self._fan_out(messages)
