"""Test helpers: callagent instances and emulators as real processes sharing one redis-server.

The scale-out tests start ``python -m callagent serve`` several times against one Redis (a
load balancer without sticky sessions) and an emulator, each process on a free loopback
port with its output in a log file that a failed start shows. ``Stream`` reads a turn's SSE
response frame by frame, so a test can act on another instance while the turn is speaking.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import aiohttp

from .conftest import body, parse_sse
from .redis_server import RedisServer, free_port, start_process, stop_process, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_READY = {
    "fastgpt": "/__emulator/streams",
    "dify": "/__emulator/state",
    "openai_compat": "/__emulator/requests",
}
"""What answers 200 once an emulator (``scripts.emulators.<name>``) serves."""


@dataclass
class Process:
    name: str
    port: int
    process: Popen[bytes]
    log_path: Path
    ready_path: str = "/readyz"  # callagent's: 200 once its cancel channel is subscribed

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@contextmanager
def redis_and(redis: RedisServer) -> Iterator[list[Process]]:
    """Start ``redis``; on the way out stop every process the caller added to the list, then it."""
    processes: list[Process] = []
    try:
        redis.start()
        yield processes
    finally:
        for p in processes:
            stop_process(p.process)
        redis.stop()


def start_emulator(name: str, log_dir: Path, *replies: str, chunk_delay: float) -> Process:
    port = free_port()
    args = [sys.executable, "-m", f"scripts.emulators.{name}", "--port", str(port)]
    args += ["--chunk-delay", str(chunk_delay)]
    for reply in replies:
        args += ["--reply", reply]
    log_path = log_dir / f"{name}-{port}.log"
    return Process(name, port, start_process(args, log_path, cwd=ROOT), log_path, EMULATOR_READY[name])


def start_callagent(name: str, log_dir: Path, redis_url: str, upstream: dict[str, str]) -> Process:
    """An instance on the upstream that ``upstream`` (its environment variables) names; small
    upstream timeouts keep its turn lease short (connect + max(first token, idle) + 5 s = 8 s)."""
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


def wait_ready(*processes: Process) -> None:
    for p in processes:
        try:
            wait_for_http(p.port, p.ready_path, p.process)
        except RuntimeError as e:
            raise RuntimeError(f"{p.name} did not start: {e}\n{p.log_tail()}") from None


class Stream:
    """An SSE response read frame by frame, with the time each one arrived."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.ended_at: float | None = None

    async def next(self) -> tuple[str, dict[str, Any]]:
        while True:
            block = await asyncio.wait_for(self.response.content.readuntil(b"\n\n"), 10)
            assert block, f"the stream ended without a terminal event: {self.frames}"
            frames = parse_sse(block)
            if frames:
                self.frames += frames
                if frames[0][0] in ("done", "error"):
                    self.ended_at = time.perf_counter()
                return frames[0]

    async def until(self, event: str) -> dict[str, Any]:
        while True:
            name, data = await self.next()
            if name == event:
                return data
            assert name not in ("done", "error"), self.frames

    async def rest(self) -> list[tuple[str, dict[str, Any]]]:
        """Every frame up to the terminal one."""
        while self.ended_at is None:
            await self.next()
        assert await self.response.content.read() == b"", "nothing after the terminal event"
        return self.frames

    @property
    def text(self) -> str:
        return "".join(d["text"] for n, d in self.frames if n == "text_delta")


async def stream_chat(http: aiohttp.ClientSession, instance: Process, session_id: str) -> Stream:
    response = await http.post(instance.url("/chat?stream=true"), json=body(session_id, text="发生了交通事故"))
    assert response.status == 200, await response.text()
    return Stream(response)


async def streaming_on(http: aiohttp.ClientSession, instance: Process, session_id: str) -> Stream:
    """A turn on ``instance`` that has started speaking (so it holds the session's lease)."""
    stream = await stream_chat(http, instance, session_id)
    await stream.until("text_delta")
    return stream
