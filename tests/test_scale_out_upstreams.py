"""Dify and OpenAI-compatible upstreams behind several callagent processes sharing one Redis.

All out of process: a ``redis-server``, the two emulators (``python -m scripts.emulators...``)
and ``python -m callagent serve`` instances, driven over HTTP. What must hold: a session's
Dify conversation and its OpenAI history live in the shared store, so any instance continues
the call, and a barge-in on another instance still stops the Dify task as the session's user.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import body
from .redis_server import RedisServer, free_port, start_process, stop_process, wait_for_http
from .test_scale_out import Process, streaming_on

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
REPLY = "<state>1002</state>" + "您好，请问现场有没有人受伤？" * 6
SPOKEN = REPLY.removeprefix("<state>1002</state>")
READY_PATHS = {"dify": "/__emulator/state", "openai_compat": "/__emulator/requests"}


def start_emulator(name: str, log_dir: Path) -> Process:
    port = free_port()
    args = [sys.executable, "-m", f"scripts.emulators.{name}", "--port", str(port), "--reply", REPLY]
    args += ["--chunk-delay", "0.05"]
    log_path = log_dir / f"{name}-{port}.log"
    return Process(name, port, start_process(args, log_path, cwd=ROOT), log_path)


def start_callagent(name: str, log_dir: Path, redis_url: str, upstream: dict[str, str]) -> Process:
    port = free_port()
    env = (
        os.environ
        | upstream
        | {
            "CALLAGENT_STORE": redis_url,
            "CALLAGENT_LOG_FORMAT": "json",
            "CALLAGENT_CONNECT_TIMEOUT": "1",
            "CALLAGENT_FIRST_TOKEN_TIMEOUT": "2",
            "CALLAGENT_IDLE_TIMEOUT": "2",
            "CALLAGENT_SHUTDOWN_TIMEOUT": "1",
            "PYTHONPATH": str(ROOT),
        }
    )
    args = [sys.executable, "-m", "callagent", "serve", "--port", str(port), "--env-file", ""]
    log_path = log_dir / f"callagent-{name}-{port}.log"
    return Process(name, port, start_process(args, log_path, env=env, cwd=log_dir), log_path)


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
    processes: list[Process] = []
    try:
        redis.start()
        dify, openai = start_emulator("dify", log_dir), start_emulator("openai_compat", log_dir)
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
        for p in processes:
            path = READY_PATHS.get(p.name, "/readyz")
            try:
                wait_for_http(p.port, path, p.process)
            except RuntimeError as e:
                raise RuntimeError(f"{p.name} did not start: {e}\n{p.log_tail()}") from None
        yield Cluster(*processes)
    finally:
        for p in processes:
            stop_process(p.process)
        redis.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


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
