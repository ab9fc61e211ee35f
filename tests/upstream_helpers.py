"""Helpers shared by the upstream tests: FastGPT failures, Dify, OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from callagent.settings import Settings
from callagent.web.keys import ENGINE, STORE

from .conftest import MakeClient, body, parse_sse

FALLBACK = Settings().fallback_text
FAST = {"connect_timeout": 0.5, "first_token_timeout": 0.6, "idle_timeout": 0.4, "turn_timeout": 5}

# (fault, error type, text spoken before the fallback): the emulators send the tag in the
# first five 4-character chunks, and cut a reply short after `fault_after_chunks` = 6.
SPOKEN = "您好，请问"
LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，打开双闪。" * 5


async def sse_turn(client: Any, session_id: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    resp = await client.post("/chat?stream=true", json=body(session_id, text=text))
    assert resp.status == 200
    return parse_sse(await resp.read())


async def ws_turn(client: Any, session_id: str, text: str) -> list[dict[str, Any]]:
    """One turn over a new WebSocket: its messages up to ``done`` or ``error``."""
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": session_id})
    assert (await ws.receive_json(timeout=5))["type"] == "ack"
    await ws.send_json({"type": "chat", "text": text})
    msgs: list[dict[str, Any]] = []
    while not msgs or msgs[-1]["type"] not in ("done", "error"):
        msgs.append(await ws.receive_json(timeout=5))
    await ws.close()
    return msgs


async def interrupted_turn(client: Any, session_id: str, heard: str) -> dict[str, Any]:
    """A streamed turn the caller barges into once speech has started, having heard ``heard``:
    the stream ends cancelled; the cancel answer."""
    resp = await client.post("/chat?stream=true", json=body(session_id, text="喂"))
    await first_frame(resp, "text_delta")
    cancelled: dict[str, Any] = await (await client.post("/cancel", json=body(session_id, spokenText=heard))).json()
    assert parse_sse(await resp.read())[-1][1]["status"] == "cancelled"
    return cancelled


def spoken(frames: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["text"] for n, d in frames if n == "text_delta")


def stages(frames: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [d["nextStageCode"] for n, d in frames if n == "stage_code"]


async def first_frame(resp: Any, name: str) -> None:
    """Read an SSE body until a frame of event ``name`` has arrived."""
    buffer = b""
    while f"event: {name}".encode() not in buffer:
        buffer += await asyncio.wait_for(resp.content.readany(), 5)


async def nothing_left(client: Any, streams: list[Any], session_id: str = "a1002") -> None:
    """No running turn, no held lease, every emulator response closed."""
    engine = client.app[ENGINE]
    async with asyncio.timeout(2):
        while engine.running(session_id) is not None or engine._tasks:
            await asyncio.sleep(0.005)
    assert await client.app[STORE].lease_owner(session_id) is None
    for stream in streams:
        await asyncio.wait_for(stream.closed.wait(), 2)
    assert b"callagent_running_turns 0.0" in await (await client.get("/metrics")).read()


async def falls_back_in_time(client: Any, fault: str, error_type: str, before: str) -> None:
    """A turn on a faulty upstream speaks ``before``, then the fallback, then ends with the
    error, all within the FAST deadlines."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = await sse_turn(client, "a1002", "喂")
    assert loop.time() - started < 2.0, f"{fault}: deadline not held"
    assert frames[-1][0] == "error" and frames[-1][1]["type"] == error_type
    assert stages(frames)[-1] == "0001" and spoken(frames) == before + FALLBACK


async def turn_over_deadline(make_client: MakeClient, settings: Settings, session_id: str) -> Any:
    """A turn longer than a 0.5 s whole-turn deadline (the upstream streams LONG_REPLY slowly)
    ends with the fallback; the client, for what the test checks next."""
    client = await make_client(settings.with_(first_token_timeout=1, idle_timeout=1, turn_timeout=0.5))
    data = await (await client.post("/chat", json=body(session_id, text="喂"))).json()
    assert data["error"]["type"] == "upstream_timeout" and "longer than 0.5s" in data["error"]["msg"]
    assert data["text"].endswith(FALLBACK) and data["nextStageCode"] == "0001"
    return client


async def key_refused(make_client: MakeClient, settings: Settings, session_id: str, secret: str) -> dict[str, Any]:
    """With a key the upstream refuses (``settings`` carry it), a turn is upstream_auth and
    readiness fails, and ``secret`` is in no message and no log; the turn's answer."""
    client = await make_client(settings.with_(**FAST))
    with capture_logs() as logs:
        data: dict[str, Any] = await (await client.post("/chat", json=body(session_id, text="喂"))).json()
    assert data["error"]["type"] == "upstream_auth" and secret not in data["error"]["msg"]
    assert (await client.get("/readyz")).status == 502
    assert secret not in repr(logs)
    return data
