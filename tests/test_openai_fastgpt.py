"""The OpenAI-compatible route on FastGPT (the emulator): fallback, barge-in, heard text, retries.

Driven by the ``openai`` SDK and by raw streams over real sockets; the emulator records when
callagent closed its upstream request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from callagent.settings import Settings
from scripts.emulators import fastgpt as fe

from .conftest import MakeClient
from .openai_support import LONG_REPLY, SYSTEM, Call, Sdk, sdk_clients, stream_until, transcript, upstream_called


@pytest.fixture
async def sdk() -> AsyncIterator[Sdk]:
    async with sdk_clients() as make:
        yield make


# -- the FastGPT emulator -------------------------------------------------------------------


async def test_upstream_failure_speaks_the_fallback_and_transfers(fastgpt_client: Any, emulator: Any, sdk: Sdk) -> None:
    emulator.set_fault("http500")
    call = Call(sdk(fastgpt_client), "oa-fail")
    final, extension = await call.say("喂")
    choice = final.choices[0]
    assert choice.message.content == Settings().fallback_text
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "transfer_call"
    assert extension["stageCode"] == "0001"
    assert len(emulator.streams) == 1  # not retried


async def test_barge_in_closes_the_upstream_and_records_what_was_heard(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>1002</state>好的。"])
    emulator.chunk_delay = 0.05
    messages: list[Any] = [SYSTEM, {"role": "user", "content": "喂"}]
    resp, said = await stream_until(fastgpt_client, "oa-barge", messages, content=True)
    closed_at = asyncio.get_running_loop().time()
    resp.close()
    (stream,) = emulator.streams
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert stream.outcome == "disconnected" and stream.disconnected_at - closed_at < 0.1
    heard = said[:3]  # the platform played only part of what it received
    messages += [{"role": "assistant", "content": heard}, {"role": "user", "content": "等一下"}]
    reply = await fastgpt_client.post(
        "/v1/chat/completions", json={"model": "x", "messages": messages}, headers={"X-Callagent-Session": "oa-barge"}
    )
    assert (await reply.json())["choices"][0]["message"]["content"] == "好的。"
    first, second = await transcript(fastgpt_client, "oa-barge")
    assert first.status == "cancelled" and first.spoken_text == heard and second.spoken_text is None


async def test_a_close_before_the_first_byte_closes_the_upstream(fastgpt_client: Any, emulator: Any) -> None:
    emulator.first_chunk_delay = 5
    resp, _ = await stream_until(fastgpt_client, "oa-early", [{"role": "user", "content": "喂"}], content=False)
    stream = await upstream_called(emulator)
    closed_at = asyncio.get_running_loop().time()
    resp.close()
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert stream.first_chunk_at is None and stream.disconnected_at - closed_at < 0.1


async def test_a_quiet_upstream_gets_keep_alive_comments(
    make_client: MakeClient, fastgpt_settings: Settings, emulator: Any
) -> None:
    client = await make_client(fastgpt_settings.with_(openai_route_keepalive=0.05))
    emulator.first_chunk_delay = 0.3
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "x", "stream": True, "messages": [{"role": "user", "content": "喂"}]},
        headers={"X-Callagent-Session": "oa-ping"},
    )
    raw = await resp.read()
    assert b"\n: ping\n\n" in raw.split(b'"content":"', 2)[1]  # between the role chunk and the text
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_a_retried_request_reaches_the_workflow_once(fastgpt_client: Any, emulator: Any) -> None:
    """LiveKit retries a request that produced nothing for 10 s, and the SDKs retry on errors."""
    messages = [SYSTEM, {"role": "user", "content": "喂"}]
    emulator.first_chunk_delay = 5
    resp, _ = await stream_until(fastgpt_client, "oa-retry", messages, content=False)
    stream = await upstream_called(emulator)
    resp.close()  # the platform gave up waiting
    await asyncio.wait_for(stream.closed.wait(), 2)
    emulator.first_chunk_delay = 0
    data = {"model": "x", "messages": messages}
    headers = {"X-Callagent-Session": "oa-retry"}
    first = await (await fastgpt_client.post("/v1/chat/completions", json=data, headers=headers)).json()
    again = await (await fastgpt_client.post("/v1/chat/completions", json=data, headers=headers)).json()
    assert again["id"] == first["id"] and again["choices"] == first["choices"]  # replayed, not re-run
    assert len(emulator.streams) == 2
    humans = [r for r in emulator.chat("oa-retry").records if r["obj"] == "Human"]
    assert len(humans) == 1
    assert [r.status for r in await transcript(fastgpt_client, "oa-retry") if not r.deleted] == ["completed"]


async def test_a_non_streamed_request_closed_early_closes_the_upstream(fastgpt_client: Any, emulator: Any) -> None:
    emulator.first_chunk_delay = 5
    data = {"model": "x", "messages": [{"role": "user", "content": "喂"}]}
    request = asyncio.create_task(
        fastgpt_client.post("/v1/chat/completions", json=data, headers={"X-Callagent-Session": "oa-json-close"})
    )
    stream = await upstream_called(emulator)
    closed_at = asyncio.get_running_loop().time()
    request.cancel()  # the platform gave up: its connection closes
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert stream.outcome == "disconnected" and stream.disconnected_at - closed_at < 0.1
    async with asyncio.timeout(2):  # the cancelled turn saves its row as it ends
        while not (rows := await transcript(fastgpt_client, "oa-json-close")):
            await asyncio.sleep(0.005)
    assert [r.status for r in rows] == ["cancelled"]


async def test_without_fallback_errors_reach_the_sdk_once(
    make_client: MakeClient, fastgpt_settings: Settings, emulator: Any, sdk: Sdk
) -> None:
    client = await make_client(fastgpt_settings.with_(fallback_enabled=False))
    emulator.set_fault("http500")
    oa = sdk(client, max_retries=2)  # the SDK's default: x-should-retry: false must stop it
    with pytest.raises(openai.InternalServerError) as failed:
        await oa.chat.completions.create(model="x", messages=[{"role": "user", "content": "喂"}], user="oa-nofb-1")
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    stream = await oa.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "喂"}], user="oa-nofb-2", stream=True
    )
    with pytest.raises(openai.APIError) as in_band:
        async for _ in stream:
            pass
    assert in_band.value.code == "upstream_error" and "emulated internal error" in in_band.value.message
    assert len(emulator.streams) == 2
