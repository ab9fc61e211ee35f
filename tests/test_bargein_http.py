"""Barge-in over HTTP: a second /chat, POST /cancel, and a gateway hanging up mid-stream."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from scripts.emulators import fastgpt as fe

from .conftest import body, parse_sse

LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，打开双闪。" * 5


async def first_frame(resp: Any, name: str) -> None:
    """Read the SSE body until a frame of event ``name`` has arrived."""
    buffer = b""
    while f"event: {name}".encode() not in buffer:
        buffer += await asyncio.wait_for(resp.content.readany(), 5)


async def long_stream_under_way(client: Any, emulator: Any, session_id: str) -> Any:
    """An SSE turn of LONG_REPLY, read until its first text_delta has arrived."""
    emulator.brain = fe.ScriptedBrain([LONG_REPLY])
    emulator.chunk_delay = 0.05
    resp = await client.post("/chat?stream=true", json=body(session_id, text="喂"))
    await first_frame(resp, "text_delta")
    return resp


async def no_running_turns(client: Any) -> None:
    async with asyncio.timeout(2):
        while b"callagent_running_turns 0.0" not in await (await client.get("/metrics")).read():
            await asyncio.sleep(0.01)


async def test_second_chat_cancels_the_first_stream(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>0001</state>好的，马上为您转接人工。"])
    emulator.chunk_delay = 0.05
    first = await fastgpt_client.post("/chat?stream=true", json=body("h1", text="喂"))
    await first_frame(first, "text_delta")
    second = await fastgpt_client.post("/chat?stream=true", json=body("h1", text="转人工"))
    first_frames = parse_sse(await first.read())
    assert first_frames[-1][0] == "done" and first_frames[-1][1]["status"] == "cancelled"
    second_frames = parse_sse(await second.read())
    assert second_frames[0][1]["nextStageCode"] == "0001"
    assert second_frames[-1][1]["status"] == "completed"
    assert emulator.streams[0].outcome == "disconnected"


async def test_post_cancel_stops_the_stream_and_closes_upstream(fastgpt_client: Any, emulator: Any) -> None:
    resp = await long_stream_under_way(fastgpt_client, emulator, "h2")
    cancelled_at = asyncio.get_running_loop().time()
    reply = await fastgpt_client.post("/cancel", json=body("h2", spokenText="请您先把"))
    assert (await reply.json())["cancelled"] is True
    frames = parse_sse(await resp.read())
    assert frames[-1][1]["status"] == "cancelled"
    (stream,) = emulator.streams
    await asyncio.wait_for(stream.closed.wait(), 1)
    assert stream.disconnected_at is not None and stream.disconnected_at - cancelled_at < 0.1
    # Nothing to cancel any more.
    assert (await (await fastgpt_client.post("/cancel", json=body("h2"))).json())["cancelled"] is False


async def test_gateway_hanging_up_cancels_the_turn(fastgpt_client: Any, emulator: Any) -> None:
    resp = await long_stream_under_way(fastgpt_client, emulator, "h3")
    hung_up_at = asyncio.get_running_loop().time()
    resp.close()
    (stream,) = emulator.streams
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert stream.outcome == "disconnected" and stream.disconnected_at - hung_up_at < 0.5
    await no_running_turns(fastgpt_client)


async def test_json_chat_is_cancelled_by_a_new_turn(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>1002</state>在的。"])
    emulator.chunk_delay = 0.05
    first = asyncio.create_task(fastgpt_client.post("/chat", json=body("h4", text="喂")))
    async with asyncio.timeout(5):
        while not emulator.streams or emulator.streams[0].first_chunk_at is None:
            await asyncio.sleep(0.01)
    second = await (await fastgpt_client.post("/chat", json=body("h4", text="还在吗"))).json()
    cancelled = orjson.loads(await (await first).read())
    assert cancelled["status"] == "cancelled" and second["status"] == "completed" and second["text"] == "在的。"
