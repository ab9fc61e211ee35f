"""Helpers shared by the Dify and OpenAI-compatible upstream tests."""

from __future__ import annotations

import asyncio
from typing import Any

from callagent.settings import Settings
from callagent.web.keys import ENGINE, STORE

from .conftest import body, parse_sse

FALLBACK = Settings().fallback_text
FAST = {"connect_timeout": 0.5, "first_token_timeout": 0.6, "idle_timeout": 0.4, "turn_timeout": 5}

# (fault, error type, text spoken before the fallback): the emulators send the tag in the
# first five 4-character chunks, and cut a reply short after `fault_after_chunks` = 6.
SPOKEN = "您好，请问"


async def sse_turn(client: Any, session_id: str, text: str) -> list[tuple[str, dict[str, Any]]]:
    resp = await client.post("/chat?stream=true", json=body(session_id, text=text))
    assert resp.status == 200
    return parse_sse(await resp.read())


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
