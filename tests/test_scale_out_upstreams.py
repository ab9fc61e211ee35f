"""Dify and OpenAI-compatible upstreams behind several callagent processes sharing one Redis.

All out of process: a ``redis-server``, the two emulators (``python -m scripts.emulators...``)
and ``python -m callagent serve`` instances, driven over HTTP. What must hold: a session's
Dify conversation and its OpenAI history live in the shared store, so any instance continues
the call, and a barge-in on another instance still stops the Dify task as the session's user.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from .cluster import Process, redis_and, start_callagent, start_emulator, streaming_on, wait_ready
from .conftest import body
from .redis_server import RedisServer

pytestmark = pytest.mark.slow

REPLY = "<state>1002</state>" + "您好，请问现场有没有人受伤？" * 6
SPOKEN = REPLY.removeprefix("<state>1002</state>")


@dataclass
class Cluster:
    dify: Process
    openai: Process
    dify_a: Process
    dify_b: Process
    openai_a: Process
    openai_b: Process


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("scale-out-upstreams")
    redis = RedisServer(log_dir)
    with redis_and(redis) as processes:
        dify, openai = (start_emulator(n, log_dir, REPLY, chunk_delay=0.05) for n in ("dify", "openai_compat"))
        processes += [dify, openai]
        dify_env = {"CALLAGENT_UPSTREAM": "dify", "DIFY_BASE_URL": dify.url("/v1"), "DIFY_API_KEY": "dify-test"}
        openai_env = {
            "CALLAGENT_UPSTREAM": "openai",
            "OPENAI_BASE_URL": openai.url("/v1"),
            "OPENAI_API_KEY": "openai-test",
            "OPENAI_MODEL": "test-model",
        }
        processes += [start_callagent(n, log_dir, redis.url, dify_env) for n in ("dify-a", "dify-b")]
        processes += [start_callagent(n, log_dir, redis.url, openai_env) for n in ("openai-a", "openai-b")]
        wait_ready(*processes)
        yield Cluster(*processes)


async def dify_state(http: aiohttp.ClientSession, dify: Process, user: str, stops: int) -> dict[str, Any]:
    """The Dify emulator's tasks and stop calls of ``user``, once ``stops`` stop calls arrived."""
    deadline = time.monotonic() + 5
    while True:
        async with http.get(dify.url("/__emulator/state")) as response:
            state = await response.json()
        mine = {key: [row for row in state[key] if row["user"] == user] for key in ("tasks", "stops")}
        if len(mine["stops"]) >= stops or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.02)


async def test_a_dify_call_moves_between_instances_and_barge_in_stops_its_task(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    first = await streaming_on(http, cluster.dify_a, "sd1")
    async with http.post(cluster.dify_b.url("/chat"), json=body("sd1", text="转人工")) as response:
        second = await response.json()
    frames = await first.rest()
    assert frames[-1] == ("done", frames[-1][1]) and frames[-1][1]["status"] == "cancelled"
    assert second["status"] == "completed" and second["text"] == SPOKEN
    state = await dify_state(http, cluster.dify, "sd1", stops=1)
    tasks, (stop,) = state["tasks"], state["stops"]
    assert len(tasks) == 2 and tasks[0]["conversation_id"] == tasks[1]["conversation_id"]  # one conversation
    assert stop == {"task_id": tasks[0]["task_id"], "user": "sd1", "matched": True}
    assert tasks[0]["outcome"] == "stopped" and tasks[1]["outcome"] == "completed"


async def test_an_openai_history_is_shared_by_the_instances(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    async with http.post(cluster.openai_a.url("/chat"), json=body("so1", text="喂")) as response:
        assert (await response.json())["text"] == SPOKEN
    async with http.post(cluster.openai_b.url("/chat"), json=body("so1", text="没有")) as response:
        assert (await response.json())["status"] == "completed"
    async with http.get(cluster.openai.url("/__emulator/requests")) as response:
        last = (await response.json())[-1]
    assert [(m["role"], m["content"]) for m in last["messages"][1:]] == [
        ("user", "喂"),
        ("assistant", REPLY),
        ("user", "没有"),
    ]
