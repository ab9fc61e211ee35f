"""Shared fixtures: the real app over real sockets, the FastGPT emulator on a real port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from callagent.settings import Settings
from callagent.web.app import create_app
from scripts.emulators import fastgpt as fastgpt_emulator

from . import redis_server as _processes
from .canary import CANARY_KEY, PLANTED, Leaks, install
from .redis_server import RedisServer

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


_LEAKS = Leaks(PLANTED)


@pytest.fixture(scope="session", autouse=True)
def canary_scan() -> Leaks:
    """Scan every response and log line of the run for the planted FastGPT keys (tests/canary.py)."""
    install(_LEAKS)
    return _LEAKS


@pytest.fixture(autouse=True)
def no_key_leaked(canary_scan: Leaks) -> Iterator[None]:
    """Fail the test during which a planted key left callagent."""
    canary_scan.take()
    yield
    canary_scan.process_logs.extend(_processes.PROCESS_LOGS)
    _processes.PROCESS_LOGS.clear()
    canary_scan.check_process_logs()
    leaked = canary_scan.take()
    assert not leaked, "a planted FastGPT key left callagent:\n" + "\n".join(leaked)


@pytest.fixture
def emulator_app(request: pytest.FixtureRequest) -> Any:
    """The emulator as the FastGPT release a test names (``indirect`` parametrization), else the newest."""
    return fastgpt_emulator.create_emulator_app(
        api_key=CANARY_KEY, build=getattr(request, "param", fastgpt_emulator.DEFAULT_BUILD)
    )


BUILDS = list(fastgpt_emulator.BUILDS)
"""Every FastGPT release the emulator can be: ``@every_build`` runs a test against each one."""
every_build = pytest.mark.parametrize("emulator_app", BUILDS, indirect=True)


@pytest.fixture
async def emulator_server(aiohttp_server: Any, emulator_app: Any) -> TestServer:
    return await aiohttp_server(emulator_app)


@pytest.fixture
def emulator(emulator_server: TestServer) -> Any:
    """The emulator's recorded state (requests, chats, streams) and run-time knobs."""
    return emulator_server.app[fastgpt_emulator.EMULATOR]


def upstream_settings(tmp_path: Path, **upstream: Any) -> Settings:
    """callagent on an upstream (the emulator) with a SQLite file store and roomy deadlines."""
    return Settings(
        store=f"sqlite:///{tmp_path}/callagent.db", first_token_timeout=5, idle_timeout=5, turn_timeout=20, **upstream
    )


@pytest.fixture
def fastgpt_settings(emulator_server: TestServer, tmp_path: Path) -> Settings:
    return upstream_settings(
        tmp_path,
        upstream="fastgpt",
        fastgpt_base_url=str(emulator_server.make_url("")).rstrip("/"),
        fastgpt_api_key=CANARY_KEY,  # type: ignore[arg-type]
        fastgpt_app_id="app1",
    )


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(settings: Settings) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(settings))

    return make


@pytest.fixture
async def fastgpt_client(make_client: MakeClient, fastgpt_settings: Settings) -> TestClient[Any, Any]:
    """callagent on FastGPT (the emulator) with a SQLite file store."""
    return await make_client(fastgpt_settings)


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    """callagent on the embedded local agent with the in-memory store."""
    return await make_client(Settings(upstream="local", store="memory://"))


def body(session_id: str = "a1002", **fields: Any) -> dict[str, Any]:
    return {"sessionId": session_id, "timeStamp": "202503310303", **fields}


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """SSE bytes -> [(event, data)], asserting the exact original framing on the way."""
    assert b"\r" not in raw, "frames must be LF-separated"
    frames = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2, f"expected `event:` then one `data:` line, got {lines!r}"
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), lines
        frames.append((lines[0][7:], orjson.loads(lines[1][6:])))
    return frames


# -- Redis: a real redis-server on a free loopback port (tests/redis_server.py) --------------



@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; tests that use it flush it first."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an empty Redis."""
    redis_server.flush()
    return redis_server.url


# -- a client for real processes (tests/cluster.py) -------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to real processes over loopback."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
