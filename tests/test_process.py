"""The real server process: SIGTERM drains and closes sockets with 1001; kill -9 loses nothing finished."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from subprocess import Popen

import aiohttp
import orjson
import pytest

from .conftest import body, parse_sse
from .redis_server import free_port, start_process, stop_process, wait_for_http

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def serve(tmp_path: Path, port: int, **env: str) -> Popen[bytes]:
    environ = os.environ | {
        "CALLAGENT_STORE": f"sqlite:///{tmp_path}/callagent.db",
        "CALLAGENT_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    args = [sys.executable, "-m", "callagent", "serve", "--port", str(port), "--env-file", ""]
    process = start_process(args, tmp_path / f"callagent-{port}.log", env=environ, cwd=tmp_path)
    wait_for_http(port, "/healthz", process)
    return process


async def test_sigterm_lets_running_turns_finish_then_closes_sockets(tmp_path: Path) -> None:
    port = free_port()
    # Local agent paced so a reply takes well over a second to stream.
    process = serve(tmp_path, port, CALLAGENT_LOCAL_CHUNK_DELAY="0.1", CALLAGENT_SHUTDOWN_TIMEOUT="10")
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            ws = await http.ws_connect("/ws")
            await ws.send_json({"type": "ping"})
            await ws.receive_json()
            sse = await http.post("/chat?stream=true", json=body("drain", text="发生了交通事故"))
            assert b"event: stage_code" in await sse.content.readuntil(b"\n\n")
            process.send_signal(signal.SIGTERM)
            frames = parse_sse(await asyncio.wait_for(sse.read(), 10))
            assert frames[-1][0] == "done" and frames[-1][1]["status"] == "completed"
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        stop_process(process)
    rows = sqlite3.connect(tmp_path / "callagent.db").execute("SELECT record FROM turns").fetchall()
    assert [orjson.loads(r[0])["status"] for r in rows] == ["completed"]


async def test_kill_9_under_load_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path, port)
    acknowledged: dict[str, str] = {}
    finished_turns: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def caller(n: int) -> None:
                sid = f"k{n}"
                for i in range(1000):
                    resp = await http.post("/set_info", json=body(sid, key=f"v{i}", value=f"{n}-{i}"))
                    if resp.status == 200:
                        acknowledged[f"{sid}/v{i}"] = f"{n}-{i}"
                    reply = await (await http.post("/chat", json=body(sid, text="发生了交通事故"))).json()
                    finished_turns[reply["turnId"]] = sid

            tasks = [asyncio.create_task(caller(n)) for n in range(8)]
            async with asyncio.timeout(10):
                while len(finished_turns) < 100:
                    await asyncio.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop_process(process)
    process = serve(tmp_path, port)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            for n in range(8):
                info = (await (await http.post("/get_info", json=body(f"k{n}"))).json())["info"]
                for key, value in acknowledged.items():
                    sid, var = key.split("/")
                    if sid == f"k{n}":
                        assert info[var] == value
    finally:
        stop_process(process)
    rows = sqlite3.connect(tmp_path / "callagent.db").execute("SELECT turn_id FROM turns").fetchall()
    assert set(finished_turns) <= {r[0] for r in rows}
