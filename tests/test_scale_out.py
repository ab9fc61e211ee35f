"""Several callagent processes sharing one Redis, as behind a load balancer (no sticky sessions).

Everything here is real and out of process: a ``redis-server``, the FastGPT emulator, and
``python -m callagent serve`` instances with ``CALLAGENT_STORE=redis://...``, driven over HTTP.
The session lease lives ``LEASE_TTL`` seconds after the instance last renewed it, so a call
whose instance died goes on elsewhere about that much later.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .cluster import Process, redis_and, start_callagent, start_emulator, stream_chat, streaming_on, wait_ready
from .conftest import body
from .redis_server import RedisServer

pytestmark = pytest.mark.slow

CHUNK_DELAY = 0.05  # 4 characters a chunk: REPLY takes about 1.7 s to stream
REPLY = "<state>1002</state>" + "您好，请问现场有没有人受伤？" * 8
SPOKEN = REPLY.removeprefix("<state>1002</state>")
LEASE_TTL = 3.0  # the default CALLAGENT_LEASE_TTL
CANCEL_BOUND = 0.1  # seconds from the request on B to the end of A's stream
FALLBACK_TEXT = "抱歉，系统暂时无法处理，正在为您转接人工客服，请稍候。"


def fastgpt(emulator: Process) -> dict[str, str]:
    return {
        "CALLAGENT_UPSTREAM": "fastgpt",
        "FASTGPT_BASE_URL": emulator.url(""),
        "FASTGPT_API_KEY": "fastgpt-test",
        "FASTGPT_APP_ID": "app1",
    }


@dataclass
class Cluster:
    redis: RedisServer
    emulator: Process
    a: Process
    b: Process
    c: Process  # the one the dead-owner test kills


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("scale-out")
    redis = RedisServer(log_dir)
    with redis_and(redis) as processes:
        emulator = start_emulator("fastgpt", log_dir, REPLY, chunk_delay=CHUNK_DELAY)
        processes.append(emulator)
        processes += [start_callagent(name, log_dir, redis.url, fastgpt(emulator)) for name in "abc"]
        wait_ready(*processes)
        yield Cluster(redis, *processes)


async def emulator_streams(http: aiohttp.ClientSession, emulator: Process, chat_id: str) -> list[dict[str, Any]]:
    async with http.get(emulator.url("/__emulator/streams")) as response:
        return [s for s in await response.json() if s["chat_id"] == chat_id]


async def upstream_outcomes(
    http: aiohttp.ClientSession, emulator: Process, chat_id: str, expected: list[str]
) -> list[dict[str, Any]]:
    """The emulator's log of the chat's completions calls, once their outcomes are ``expected``."""
    deadline = time.monotonic() + 5
    while True:
        streams = await emulator_streams(http, emulator, chat_id)
        if [s["outcome"] for s in streams] == expected or time.monotonic() > deadline:
            assert [s["outcome"] for s in streams] == expected, streams
            return streams
        await asyncio.sleep(0.02)


async def post(http: aiohttp.ClientSession, instance: Process, path: str, **fields: Any) -> tuple[int, Any]:
    async with http.post(instance.url(path), json=body(**fields)) as response:
        return response.status, await response.json()


def done_status(frames: list[tuple[str, dict[str, Any]]]) -> str:
    name, data = frames[-1]
    assert name == "done", frames
    return str(data["status"])


# -- sharing and cancelling across instances ----------------------------------------------------


async def test_variables_set_on_one_instance_are_seen_on_the_other(cluster: Cluster, http: Any) -> None:
    status, _ = await post(http, cluster.a, "/set_info", sessionId="vars-1", key="hphm1", value="沪A8939")
    assert status == 200
    status, got = await post(http, cluster.b, "/get_info", sessionId="vars-1", key="hphm1")
    assert (status, got["value"]) == (200, "沪A8939")
    status, got = await post(http, cluster.b, "/get_info", sessionId="vars-1")
    assert got["info"] == {"hphm1": "沪A8939"}


async def test_cancel_on_b_stops_the_turn_streaming_on_a(cluster: Cluster, http: Any) -> None:
    # A session that never had set_info: its first turn is cancellable from anywhere all the same.
    stream = await streaming_on(http, cluster.a, "cancel-1")
    sent = time.perf_counter()
    status, reply = await post(http, cluster.b, "/cancel", sessionId="cancel-1", spokenText="您好")
    assert (status, reply["cancelled"]) == (200, True)
    frames = await stream.rest()
    assert stream.ended_at is not None
    latency = stream.ended_at - sent
    assert done_status(frames) == "cancelled"
    assert latency < CANCEL_BOUND, f"A's stream ended {latency * 1000:.1f} ms after the cancel on B"
    assert stream.text and SPOKEN.startswith(stream.text) and stream.text != SPOKEN
    (upstream,) = await upstream_outcomes(http, cluster.emulator, "cancel-1", ["disconnected"])
    assert upstream["disconnected_at"] is not None
    # The session is free again: the next turn, on either instance, runs to the end.
    frames = await (await stream_chat(http, cluster.a, "cancel-1")).rest()
    assert done_status(frames) == "completed"


async def test_new_turn_on_b_supersedes_the_turn_streaming_on_a(cluster: Cluster, http: Any) -> None:
    await post(http, cluster.a, "/set_info", sessionId="barge-1", key="hphm1", value="沪A8939")
    old = await streaming_on(http, cluster.a, "barge-1")
    sent = time.perf_counter()
    new = await stream_chat(http, cluster.b, "barge-1")
    old_frames, new_frames = await asyncio.gather(old.rest(), new.rest())
    assert old.ended_at is not None
    latency = old.ended_at - sent
    assert done_status(old_frames) == "cancelled"
    assert latency < CANCEL_BOUND, f"A's stream ended {latency * 1000:.1f} ms after the new turn on B"
    assert done_status(new_frames) == "completed"
    assert new_frames[0] == ("stage_code", new_frames[0][1]) and new_frames[0][1]["nextStageCode"] == "1002"
    assert new.text == SPOKEN
    upstream = await upstream_outcomes(http, cluster.emulator, "barge-1", ["disconnected", "completed"])
    assert upstream[0]["disconnected_at"] < upstream[1]["started"] + 1, "A's upstream closed as B's began"
    # B's turn got the variables set through A, and A sees B's transcript.
    async with http.get(cluster.emulator.url("/__emulator/requests")) as response:
        sent_upstream = [r["body"] for r in await response.json() if r["path"].endswith("/chat/completions")]
    assert [b["variables"] for b in sent_upstream if b["chatId"] == "barge-1"][-1] == {"hphm1": "沪A8939"}
    status, deleted = await post(http, cluster.a, "/delete_last_turn", sessionId="barge-1")
    assert (status, deleted["turnId"]) == (200, new_frames[-1][1]["turnId"])


async def test_lease_of_a_killed_owner_expires(cluster: Cluster, http: Any) -> None:
    stream = await streaming_on(http, cluster.c, "killed-1")
    cluster.c.process.send_signal(signal.SIGKILL)
    cluster.c.process.wait()
    killed = time.monotonic()
    stream.response.close()
    # The dead owner does not answer the cancel; its lease expires (nobody renews it) and the
    # caller's next utterance, sent to B at once, runs then: no session_busy, no transfer.
    following = await stream_chat(http, cluster.b, "killed-1")
    await following.until("text_delta")
    assert time.monotonic() - killed < LEASE_TTL + 1, "the dead owner's lease held too long"
    assert done_status(await following.rest()) == "completed"


# -- Redis outage ------------------------------------------------------------------------------

LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，" * 25  # about 5 s of streaming
SHORT_REPLY = "<state>1002</state>好的。"


@dataclass
class Outage:
    redis: RedisServer
    emulator: Process
    app: Process


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    redis = RedisServer(tmp_path)
    with redis_and(redis) as processes:
        # Replies alternate per chat: a session's first turn is long, its second short.
        emulator = start_emulator("fastgpt", tmp_path, LONG_REPLY, SHORT_REPLY, chunk_delay=CHUNK_DELAY)
        processes += [emulator, start_callagent("outage", tmp_path, redis.url, fastgpt(emulator))]
        wait_ready(*processes)
        yield Outage(redis, *processes)


async def test_redis_outage_fails_fast_and_heals_by_itself(outage: Outage, http: Any) -> None:
    app = outage.app
    assert (await post(http, app, "/set_info", sessionId="down-1", key="k", value="v"))[0] == 200
    running = await streaming_on(http, app, "down-1")

    outage.redis.stop()
    started = time.perf_counter()
    status, error = await post(http, app, "/set_info", sessionId="down-1", key="k", value="w")
    assert time.perf_counter() - started < 0.5
    assert (status, error["code"], error["type"]) == (503, "503", "store_unavailable")
    assert "Redis" in error["msg"] and "unavailable" in error["msg"]
    # A new call gets the fallback: the caller hears the phrase, the gateway gets the transfer.
    status, reply = await post(http, app, "/chat", sessionId="down-2", text="喂")
    assert status == 200
    assert (reply["nextStageCode"], reply["text"]) == ("0001", FALLBACK_TEXT)
    assert reply["error"]["type"] == "store_unavailable"
    # The running stream cannot keep its lease: it ends with the fallback, not in silence.
    frames = await running.rest()
    assert frames[-1][0] == "error" and frames[-1][1]["type"] == "store_unavailable"
    assert frames[-3] == ("stage_code", frames[-3][1]) and frames[-3][1]["nextStageCode"] == "0001"
    assert frames[-2] == ("text_delta", frames[-2][1]) and frames[-2][1]["text"] == FALLBACK_TEXT
    async with http.get(app.url("/readyz")) as response:
        assert response.status == 503
    async with http.get(app.url("/healthz")) as response:
        assert response.status == 200 and app.process.poll() is None

    outage.redis.start()  # same port, empty: no persistence
    deadline = time.monotonic() + 5
    while True:
        async with http.get(app.url("/readyz")) as response:
            if response.status == 200:
                break
        assert time.monotonic() < deadline, "callagent did not reconnect to Redis"
        await asyncio.sleep(0.05)
    assert (await post(http, app, "/set_info", sessionId="down-1", key="k", value="again"))[0] == 200
    status, got = await post(http, app, "/get_info", sessionId="down-1", key="k")
    assert (status, got["value"]) == (200, "again")
    frames = await (await stream_chat(http, app, "down-1")).rest()
    assert done_status(frames) == "completed"
