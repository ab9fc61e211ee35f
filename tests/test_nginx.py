"""A crashed instance behind nginx costs its calls seconds, not a transfer.

Debian's nginx, configured with ``deploy/nginx/callagent.conf``, in front of three callagent
processes and one redis-server (all real, out of process). Thirty calls are in progress, SSE
and WebSocket, when one instance is killed with SIGKILL: every call's next utterance, sent
through nginx, completes normally within the lease TTL + 1 s, and no acknowledged variable
or finished turn is lost.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callagent.store.redis import RedisStore

from .cluster import Process, start_callagent, start_emulator, wait_ready
from .conftest import body
from .redis_server import RedisServer, free_port, start_process, stop_process, wait_for_http
from .test_scale_out import CHUNK_DELAY, LONG_REPLY, SHORT_REPLY, fastgpt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LEASE_TTL = 3.0  # the default CALLAGENT_LEASE_TTL
CALLS, WS_CALLS = 30, 10  # the first WS_CALLS calls talk over the WebSocket, the others SSE


def start_nginx(conf_dir: Path, port: int, instances: list[Process]) -> Process:
    """nginx in the foreground, its main file including the shipped configuration."""
    conf_dir.mkdir()
    (conf_dir / "callagent-upstreams.conf").write_text(
        "".join(f"server 127.0.0.1:{p.port} max_fails=1 fail_timeout=10s;\n" for p in instances)
    )
    (conf_dir / "callagent-listen.conf").write_text(f"listen 127.0.0.1:{port};\n")
    temp = "\n".join(
        f"    {kind}_temp_path {conf_dir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (conf_dir / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}
    include {ROOT}/deploy/nginx/callagent.conf;
}}
"""
    )
    args = [NGINX, "-p", f"{conf_dir}/", "-c", str(conf_dir / "nginx.conf"), "-e", str(conf_dir / "error.log")]
    process = start_process(args, conf_dir / "nginx.out")
    wait_for_http(port, "/healthz", process)
    return Process("nginx", port, process, conf_dir / "error.log")


@dataclass
class Site:
    redis: RedisServer
    instances: list[Process]
    nginx: Process


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed: `make test` installs it (apt-get install nginx)")
    redis = RedisServer(tmp_path)
    processes: list[Process] = []
    try:
        redis.start()
        # Per call: the first turn short, the second long (in progress at the kill), the third short.
        emulator = start_emulator("fastgpt", tmp_path, SHORT_REPLY, LONG_REPLY, chunk_delay=CHUNK_DELAY)
        instances = [start_callagent(name, tmp_path, redis.url, fastgpt(emulator)) for name in "abc"]
        processes += [emulator, *instances]
        wait_ready(*processes)
        nginx = start_nginx(tmp_path / "nginx", free_port(), instances)
        processes.append(nginx)
        yield Site(redis, instances, nginx)
    finally:
        for p in reversed(processes):
            stop_process(p.process)
        redis.stop()


@pytest.fixture
async def http(site: Site) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(site.nginx.url(""), connector=connector) as session:
        yield session


async def post(http: aiohttp.ClientSession, path: str, **fields: Any) -> dict[str, Any]:
    async with http.post(path, json=body(**fields)) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def sse_in_progress(http: aiohttp.ClientSession, session_id: str) -> aiohttp.ClientResponse:
    """A streamed turn through nginx, read until its first text (it holds the session's lease)."""
    response = await http.post("/chat?stream=true", json=body(session_id, text="然后呢"))
    assert response.status == 200
    buffer = b""
    while b"event: text_delta" not in buffer:
        buffer += await asyncio.wait_for(response.content.readany(), 5)
    return response


async def ws_in_progress(http: aiohttp.ClientSession, session_id: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect("/ws")
    await ws.send_json({"type": "chat", "sessionId": session_id, "text": "然后呢"})
    while (await asyncio.wait_for(ws.receive_json(), 5))["type"] != "text_delta":
        pass
    return ws


async def next_utterance(
    http: aiohttp.ClientSession, session_id: str, ws: aiohttp.ClientWebSocketResponse | None
) -> tuple[str, str]:
    """The caller's next utterance, as its gateway sends it: over its WebSocket (opened again
    through nginx when its instance died), or as a JSON /chat. (status, turn id)"""
    if ws is None:
        reply = await post(http, "/chat", sessionId=session_id, text="好的")
        return reply["status"], reply["turnId"]
    if ws.closed or ws.exception() is not None:
        ws = await http.ws_connect("/ws")
    try:
        await ws.send_json({"type": "chat", "sessionId": session_id, "text": "好的", "turnId": f"{session_id}-3"})
    except ConnectionResetError:
        ws = await http.ws_connect("/ws")
        await ws.send_json({"type": "chat", "sessionId": session_id, "text": "好的", "turnId": f"{session_id}-3"})
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:  # the socket was on the killed instance
            ws = await http.ws_connect("/ws")
            await ws.send_json({"type": "chat", "sessionId": session_id, "text": "好的", "turnId": f"{session_id}-3"})
            continue
        data = msg.json()
        if data.get("turnId") == f"{session_id}-3" and data["type"] in ("done", "error"):
            await ws.close()
            return data.get("status", data.get("error", "")), data["turnId"]


async def test_a_killed_instance_costs_its_calls_one_lease_ttl(site: Site, http: aiohttp.ClientSession) -> None:
    sessions = [f"nginx-{n}" for n in range(CALLS)]
    # Every call has an acknowledged variable and a finished turn.
    await asyncio.gather(*(post(http, "/set_info", sessionId=s, key="plate", value=f"沪A{s}") for s in sessions))
    replies = await asyncio.gather(*(post(http, "/chat", sessionId=sid, text="喂") for sid in sessions))
    finished = {sid: reply["turnId"] for sid, reply in zip(sessions, replies, strict=True)}
    # Thirty calls in progress: their second turn is streaming, spread over the three instances.
    ws_calls, sse_calls = sessions[:WS_CALLS], sessions[WS_CALLS:]
    sockets = dict(zip(ws_calls, await asyncio.gather(*(ws_in_progress(http, s) for s in ws_calls)), strict=True))
    streams = dict(zip(sse_calls, await asyncio.gather(*(sse_in_progress(http, s) for s in sse_calls)), strict=True))

    victim = site.instances[2]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    killed = time.monotonic()
    for response in streams.values():
        response.close()  # the gateway hears the caller speak again: it stops playing the reply

    async def timed(sid: str) -> tuple[str, str, float]:
        status, turn_id = await next_utterance(http, sid, sockets.get(sid))
        return status, turn_id, time.monotonic() - killed

    results = dict(zip(sessions, await asyncio.gather(*(timed(sid) for sid in sessions)), strict=True))
    slow = {sid: r for sid, r in results.items() if r[0] != "completed" or r[2] > LEASE_TTL + 1}
    assert not slow, f"calls not answered within {LEASE_TTL + 1}s of the kill: {slow}"
    assert max(r[2] for r in results.values()) > 1, "some calls were on the killed instance and waited for it"

    store = RedisStore(site.redis.url, transcript_ttl=3600)
    await store.open()
    try:
        for sid in sessions:
            assert (await post(http, "/get_info", sessionId=sid, key="plate"))["value"] == f"沪A{sid}"
            rows = {r.turn_id: r for r in await store.turns(sid)}
            assert rows[finished[sid]].status == "completed", "a finished turn was lost"
            assert rows[results[sid][1]].status == "completed"
    finally:
        await store.close()
