"""A turn leaves no reference cycles behind: with the collector off, the garbage of N turns
through the real app (SSE, JSON, WebSocket) is all freed by reference counting.

Cyclic garbage on the turn's road is what makes the collector run ever more often as load grows;
this keeps the road free of it. (aiohttp's own objects of a WebSocket connection form a cycle
when the socket closes, so the socket stays open while turns are counted.)
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import body, parse_sse

TURNS = 30


@pytest.fixture
def collector_off() -> Iterator[Callable[[], int]]:
    """gc disabled for the test; the returned function counts the cyclic garbage made since."""
    gc.collect()
    gc.disable()

    def cycles() -> int:
        return gc.collect()

    try:
        yield cycles
    finally:
        gc.enable()


async def test_sse_and_json_turns_leave_no_cycles(fastgpt_client: Any, collector_off: Callable[[], int]) -> None:
    async def sse(i: int) -> None:
        resp = await fastgpt_client.post("/chat?stream=true", json=body(session_id=f"g{i % 3}", text="喂"))
        assert parse_sse(await resp.read())[-1][1]["status"] == "completed"

    async def folded(i: int) -> None:
        resp = await fastgpt_client.post("/chat", json=body(session_id=f"g{i % 3}", text="喂"))
        assert (await resp.json())["status"] == "completed"

    await sse(-1)  # first-use caches (routes, pools) are not a turn's garbage
    await folded(-1)
    collector_off()
    for i in range(TURNS):
        await sse(i)
        await folded(i)
    assert collector_off() == 0


async def test_websocket_turns_leave_no_cycles(fastgpt_client: Any, collector_off: Callable[[], int]) -> None:
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "gw"})
    assert (await ws.receive_json())["type"] == "ack"

    async def turn() -> None:
        await ws.send_json({"type": "chat", "text": "喂"})
        while (msg := await ws.receive_json())["type"] != "done":
            assert msg["type"] in ("stage_code", "text_delta")

    await turn()
    collector_off()
    for _ in range(TURNS):
        await turn()
    assert collector_off() == 0
    await ws.close()
