"""The OpenAI-compatible route driven by LiveKit Agents' OpenAI plugin, over real sockets.

``livekit.plugins.openai.LLM(base_url=...)`` exactly as a LiveKit voice agent uses it, with the
framework's own ``EndCallTool``: an intake call ending in ``end_call`` and the tool-result
request after it, a transfer, a barge-in whose truncated assistant message becomes the heard
text, and LiveKit's timeout-and-retry of a request that produced nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from livekit.agents import APIConnectOptions, llm
from livekit.agents.beta.tools import EndCallTool
from livekit.agents.llm.utils import prepare_function_arguments
from livekit.plugins import openai as lk_openai

from callagent.settings import Settings
from callagent.web.keys import STORE
from scripts.emulators import fastgpt as fe

from .conftest import MakeClient

LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，打开双闪。" * 5

MakeLLM = Callable[..., lk_openai.LLM]


@pytest.fixture
async def livekit_llm() -> AsyncIterator[MakeLLM]:
    made: list[lk_openai.LLM] = []

    def make(client: Any, session_id: str) -> lk_openai.LLM:
        model = lk_openai.LLM(
            model="callagent",
            base_url=str(client.make_url("/v1")),
            api_key="unused",
            extra_headers={"X-Callagent-Session": session_id},
        )
        made.append(model)
        return model

    yield make
    for model in made:
        await model.aclose()


@llm.function_tool
async def transfer_call(reason: str) -> str:
    """Transfer the caller to a human agent."""
    return "transferred"


class LiveKitCall:
    """A LiveKit agent's chat context, grown turn by turn as AgentSession grows it."""

    def __init__(self, model: lk_openai.LLM, tools: list[Any]) -> None:
        self.model = model
        self.tools = tools
        self.ctx = llm.ChatContext.empty()
        self.ctx.add_message(role="system", content="交通事故快处")

    async def reply(self, conn_options: APIConnectOptions | None = None) -> tuple[str, list[llm.FunctionToolCall]]:
        text: list[str] = []
        calls: list[llm.FunctionToolCall] = []
        options = {"conn_options": conn_options} if conn_options else {}
        async with self.model.chat(chat_ctx=self.ctx, tools=self.tools, **options) as stream:
            async for chunk in stream:
                if chunk.delta is not None:
                    text.append(chunk.delta.content or "")
                    calls += chunk.delta.tool_calls
        return "".join(text), calls

    async def say(self, utterance: str) -> tuple[str, list[llm.FunctionToolCall]]:
        self.ctx.add_message(role="user", content=utterance)
        text, calls = await self.reply()
        self.ctx.add_message(role="assistant", content=text)
        return text, calls


async def test_an_intake_call_ends_with_livekit_s_end_call_tool(client: Any, livekit_llm: MakeLLM) -> None:
    call = LiveKitCall(livekit_llm(client, "lk-happy"), list(EndCallTool().tools))
    for said in [
        "喂",
        "方便",
        "没有",
        "就我一辆，撞了护栏",
        "沪A8939",
        "对",
        "13812345678",
        "对的",
        "中山路和人民路路口",
    ]:
        text, calls = await call.say(said)
        assert text and not calls
    text, calls = await call.say("好的，再见")
    assert "再见" in text
    (end_call,) = calls
    assert end_call.name == "end_call" and '"stageCode":"0000"' in end_call.arguments
    # AgentSession runs the tool and asks again with its output: no new turn.
    call.ctx.insert(llm.FunctionCall(call_id=end_call.call_id, name=end_call.name, arguments=end_call.arguments))
    call.ctx.insert(
        llm.FunctionCallOutput(call_id=end_call.call_id, name="end_call", output="say goodbye", is_error=False)
    )
    assert await call.reply() == ("", [])
    assert len(await client.app[STORE].turns("lk-happy")) == 10


async def test_injury_calls_a_livekit_function_tool_to_transfer(client: Any, livekit_llm: MakeLLM) -> None:
    call = LiveKitCall(livekit_llm(client, "lk-injury"), [transfer_call, *EndCallTool().tools])
    await call.say("喂")
    text, calls = await call.say("有人受伤了")
    assert "幺二零" in text
    (transfer,) = calls
    assert transfer.name == "transfer_call" and '"reason":"有人伤转接人工"' in transfer.arguments
    # LiveKit binds the arguments to the tool as AgentSession would; the stage keys are ignored.
    assert prepare_function_arguments(fnc=transfer_call, json_arguments=transfer.arguments) == (("有人伤转接人工",), {})


async def test_a_livekit_barge_in_records_the_truncated_reply_as_heard(
    fastgpt_client: Any, emulator: Any, livekit_llm: MakeLLM
) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>1002</state>好的。"])
    emulator.chunk_delay = 0.05
    call = LiveKitCall(livekit_llm(fastgpt_client, "lk-barge"), list(EndCallTool().tools))
    call.ctx.add_message(role="user", content="喂")
    stream = call.model.chat(chat_ctx=call.ctx, tools=call.tools)
    async for chunk in stream:
        if chunk.delta is not None and chunk.delta.content:
            heard = chunk.delta.content[:2]
            break
    interrupted_at = asyncio.get_running_loop().time()
    await stream.aclose()  # the caller spoke: LiveKit drops the reply
    (upstream,) = emulator.streams
    await asyncio.wait_for(upstream.closed.wait(), 2)
    assert upstream.outcome == "disconnected" and upstream.disconnected_at - interrupted_at < 0.1
    call.ctx.add_message(role="assistant", content=heard, interrupted=True)
    assert (await call.say("等一下"))[0] == "好的。"
    first, second = await fastgpt_client.app[STORE].turns("lk-barge")
    assert first.status == "cancelled" and first.spoken_text == heard and second.spoken_text is None


async def test_livekit_s_timeout_retry_reaches_the_workflow_once(
    make_client: MakeClient, fastgpt_settings: Settings, emulator: Any, livekit_llm: MakeLLM
) -> None:
    """No keep-alive in time: LiveKit gives up on the silent attempt and sends it again."""
    client = await make_client(fastgpt_settings.with_(openai_route_keepalive=30))
    emulator.set_fault("no_first_token", count=1)
    call = LiveKitCall(livekit_llm(client, "lk-retry"), [])
    call.ctx.add_message(role="user", content="喂")
    text, _ = await call.reply(APIConnectOptions(max_retry=1, retry_interval=0, timeout=0.3))
    assert text
    assert [s.outcome for s in emulator.streams] == ["disconnected", "completed"]
    humans = [r for r in emulator.chat("lk-retry").records if r["obj"] == "Human"]
    assert len(humans) == 1
    rows = [r for r in await client.app[STORE].turns("lk-retry") if not r.deleted]
    assert [r.status for r in rows] == ["completed"]


async def test_keep_alive_comments_beat_livekit_s_read_timeout(
    make_client: MakeClient, fastgpt_settings: Settings, emulator: Any, livekit_llm: MakeLLM
) -> None:
    client = await make_client(fastgpt_settings.with_(openai_route_keepalive=0.05))
    emulator.first_chunk_delay = 0.5
    call = LiveKitCall(livekit_llm(client, "lk-alive"), [])
    call.ctx.add_message(role="user", content="喂")
    text, _ = await call.reply(APIConnectOptions(max_retry=1, retry_interval=0, timeout=0.3))
    assert text and len(emulator.streams) == 1
