"""The OpenAI-compatible route driven by the official ``openai`` SDK over real sockets.

Against the local agent (the default upstream): a whole intake call ending in the hang-up
tool, a transfer on injury, usage, clause segmentation, sessions, tool results, auth and bad
bodies. Against the FastGPT emulator: an upstream failure, barge-in (also before the first
byte), what the caller heard, retries. ``max_retries=0`` everywhere: a retry would hide a bug.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import fastgpt_emulator as fe
import openai
import orjson
import pytest
import structlog
from openai import AsyncOpenAI

from callagent.settings import ConfigError, Settings
from callagent.web.app import create_app
from callagent.web.keys import STORE

from .conftest import MakeClient

END_CALL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "End the call.",
        "strict": True,
        "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
    },
}
TRANSFER = {
    "type": "function",
    "function": {
        "name": "transfer_call",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [END_CALL, TRANSFER]
SYSTEM = {"role": "system", "content": "交通事故快处"}
LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，打开双闪。" * 5

Sdk = Callable[..., AsyncOpenAI]


@pytest.fixture
async def sdk() -> AsyncIterator[Sdk]:
    """``sdk(test_client, api_key=...)``: an AsyncOpenAI pointed at the test server's /v1."""
    made: list[AsyncOpenAI] = []

    def make(client: Any, api_key: str = "unused", **kwargs: Any) -> AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        oa = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=api_key, **kwargs)
        made.append(oa)
        return oa

    yield make
    for oa in made:
        await oa.close()


class Call:
    """One phone call as a platform runs it: the whole history goes out with every request."""

    def __init__(self, oa: AsyncOpenAI, session_id: str, tools: list[dict[str, Any]] = TOOLS) -> None:
        self.oa = oa
        self.headers = {"X-Callagent-Session": session_id}
        self.tools = tools
        self.messages: list[dict[str, Any]] = [SYSTEM]

    async def say(self, text: str) -> tuple[Any, dict[str, Any]]:
        """The caller speaks; returns the final completion (SDK stream helper) and the extension."""
        self.messages.append({"role": "user", "content": text})
        extension: dict[str, Any] = {}
        async with self.oa.chat.completions.stream(
            model="callagent", messages=self.messages, tools=self.tools, extra_headers=self.headers
        ) as stream:
            async for event in stream:
                if event.type == "chunk" and event.chunk.model_extra and "callagent" in event.chunk.model_extra:
                    extension = event.chunk.model_extra["callagent"]
            final = await stream.get_final_completion()
        message = final.choices[0].message
        self.messages.append(message.model_dump(exclude_none=True, exclude={"parsed", "refusal"}))
        return final, extension


async def transcript(client: Any, session_id: str) -> list[Any]:
    return await client.app[STORE].turns(session_id)


# -- the local agent ------------------------------------------------------------------------


async def test_models_lists_the_configured_model(client: Any, sdk: Sdk) -> None:
    page = await sdk(client).models.list()
    assert [m.id for m in page.data] == ["callagent"]
    assert (await client.get("/models")).status == 200


async def test_a_whole_intake_call_ends_in_the_hang_up_tool(client: Any, sdk: Sdk) -> None:
    call = Call(sdk(client), "oa-happy")
    script = [
        ("喂", "1002"),
        ("方便", "1002"),
        ("没有", "1002"),
        ("就我一辆，撞了护栏", "1002"),
        ("沪A8939", "1002"),
        ("对", "1002"),
        ("13812345678", "1002"),
        ("对的", "1002"),
        ("中山路和人民路路口", "2000"),
    ]
    for said, stage in script:
        final, extension = await call.say(said)
        assert extension["stageCode"] == stage and final.choices[0].finish_reason == "stop"
        assert final.choices[0].message.content and "<state>" not in final.choices[0].message.content
    final, extension = await call.say("好的，再见")
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and "再见" in (choice.message.content or "")
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.function.name == "end_call"
    assert tool_call.function.parsed_arguments == {"stageCode": "0000", "stage": "结束通话"}
    assert extension == {
        "turnId": final.id.removeprefix("chatcmpl-"),
        "stageCode": "0000",
        "stage": "结束通话",
        "stageCodes": ["0000"],
    }
    assert len(await transcript(client, "oa-happy")) == 10
    info = await (await client.get("/get_info", params={"sessionId": "oa-happy"})).json()
    assert info["info"]["hphm1"] == "沪A8939" and info["info"]["sgdd"] == "中山路和人民路路口"


async def test_injury_transfers_with_the_schema_s_required_parameter(client: Any, sdk: Sdk) -> None:
    oa = sdk(client)
    headers = {"X-Callagent-Session": "oa-injury"}
    messages: list[Any] = [SYSTEM, {"role": "user", "content": "喂"}]
    first = await oa.chat.completions.create(model="x", messages=messages, tools=TOOLS, extra_headers=headers)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "有人受伤了，流了很多血"},
    ]
    reply = await oa.chat.completions.create(model="x", messages=messages, tools=TOOLS, extra_headers=headers)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and "120" in (choice.message.content or "")
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.function.name == "transfer_call"
    stage = "有人伤转接人工"
    assert json.loads(tool_call.function.arguments) == {"stageCode": "0003", "stage": stage, "reason": stage}
    assert reply.model_extra and reply.model_extra["callagent"]["stageCode"] == "0003"


async def test_a_platform_s_own_tool_names_are_matched(client: Any, sdk: Sdk) -> None:
    """Vapi-style ``endCall``; no tool offered: the reply just ends."""
    oa = sdk(client)
    end_call = {"type": "function", "function": {"name": "endCall", "parameters": {"type": "object"}}}
    for tools, expected in (([end_call], "endCall"), ([], None)):
        reply = await oa.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "我现在不方便"}], tools=tools, user=f"vapi-{expected}"
        )
        calls = reply.choices[0].message.tool_calls
        assert (calls[0].function.name if calls else None) == expected


async def test_stream_chunks_role_first_usage_last(client: Any, sdk: Sdk) -> None:
    stream = await sdk(client).chat.completions.create(
        model="my-model",
        messages=[{"role": "user", "content": "喂"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Callagent-Session": "oa-usage"},
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and all(c.model == "my-model" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("您好") and "<state>" not in text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text) and chunks[-1].usage.prompt_tokens == 1


async def test_clause_segmentation_is_chosen_per_request(client: Any) -> None:
    async def pieces(session_id: str, **headers: str) -> list[str]:
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "x", "stream": True, "messages": [{"role": "user", "content": "喂"}]},
            headers={"X-Callagent-Session": session_id, **headers},
        )
        out = []
        for line in (await resp.read()).decode().split("\n\n"):
            if line.startswith("data: {"):
                choices = orjson.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    out.append(choices[0]["delta"]["content"])
        return out

    plain = await pieces("oa-seg-1")
    clauses = await pieces("oa-seg-2", **{"X-Callagent-Segment": "clause"})
    assert "".join(plain) == "".join(clauses)
    assert all(p[-1] in "，。？！" for p in clauses) and not all(p[-1] in "，。？！" for p in plain)


async def test_a_tool_result_is_answered_without_a_turn(client: Any, sdk: Sdk) -> None:
    call = Call(sdk(client), "oa-tool-result")
    final, _ = await call.say("我现在不方便")
    (tool_call,) = final.choices[0].message.tool_calls
    call.messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": "say goodbye to the user"})
    reply = await call.oa.chat.completions.create(
        model="x", messages=call.messages, tools=TOOLS, extra_headers=call.headers
    )
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.content
    assert not reply.choices[0].message.tool_calls
    assert len(await transcript(client, "oa-tool-result")) == 1


# -- sessions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fields", "expected"),
    [
        ({"X-Callagent-Session": "s-header", "sessionid": "s-other"}, {"session_id": "s-body"}, "s-header"),
        ({"sessionid": "s-tencent"}, {"user": "s-user"}, "s-tencent"),
        ({}, {"session_id": "s-body", "user": "s-user"}, "s-body"),
        ({}, {"metadata": {"call_id": "s-meta"}, "user": "s-user"}, "s-meta"),
        ({}, {"call": {"id": "s-vapi"}, "user": "s-user"}, "s-vapi"),
        ({}, {"extendData": {"instanceId": "s-tccc"}, "user": "s-user"}, "s-tccc"),
        ({}, {"user": "s-user"}, "s-user"),
    ],
)
async def test_the_session_comes_from_the_first_source_present(
    client: Any, headers: dict[str, str], fields: dict[str, Any], expected: str
) -> None:
    data = {"model": "x", "messages": [{"role": "user", "content": "喂"}], **fields}
    resp = await client.post("/v1/chat/completions", json=data, headers=headers)
    assert resp.status == 200, await resp.text()
    assert [r.caller_text for r in await transcript(client, expected)] == ["喂"]


async def test_an_unnamed_conversation_keeps_one_derived_session(client: Any) -> None:
    messages: list[Any] = [SYSTEM, {"role": "user", "content": "喂"}]
    with structlog.testing.capture_logs() as logs:
        first = await (await client.post("/chat/completions", json={"model": "x", "messages": messages})).json()
        messages += [first["choices"][0]["message"], {"role": "user", "content": "方便"}]
        second = await (await client.post("/chat/completions", json={"model": "x", "messages": messages})).json()
    assert "有人受伤吗" in second["choices"][0]["message"]["content"]  # the call went on
    assert [e["log_level"] for e in logs if e["event"] == "openai_session_derived"] == ["warning", "warning"]
    assert len({e["session_id"] for e in logs if e["event"] == "turn"}) == 1


async def test_null_options_are_unset(client: Any) -> None:
    data = {"model": None, "stream": None, "stream_options": None, "tools": None, "metadata": None, "user": "nulls"}
    resp = await client.post("/v1/chat/completions", json={**data, "messages": [{"role": "user", "content": "喂"}]})
    body = await resp.json()
    assert resp.status == 200 and body["object"] == "chat.completion" and body["model"] == "callagent"


async def test_a_platform_id_that_is_no_session_id_is_mapped(client: Any) -> None:
    data = {"model": "x", "messages": [{"role": "user", "content": "喂"}], "user": "caller@example.com"}
    with structlog.testing.capture_logs() as logs:
        assert (await client.post("/v1/chat/completions", json=data)).status == 200
    (turn,) = [e for e in logs if e["event"] == "turn"]
    assert turn["session_id"].startswith("h-")


# -- auth and bad bodies --------------------------------------------------------------------


async def test_auth_accepts_bearer_and_bare_keys_on_these_routes_only(make_client: MakeClient, sdk: Sdk) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", api_keys=("sk-test",)))
    assert [m.id for m in (await sdk(client, api_key="sk-test").models.list()).data] == ["callagent"]
    with pytest.raises(openai.AuthenticationError) as refused:
        await sdk(client, api_key="sk-wrong").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "喂"}]
        )
    assert refused.value.code == "unauthorized" and refused.value.type == "authentication_error"
    bare = {"Authorization": "sk-test"}
    data = {"model": "x", "messages": [{"role": "user", "content": "喂"}], "user": "auth1"}
    assert (await client.post("/v1/chat/completions", json=data, headers=bare)).status == 200
    # Other routes keep their own scheme and error body.
    other = await client.get("/get_info", params={"sessionId": "auth1"}, headers=bare)
    assert other.status == 401 and (await other.json())["type"] == "unauthorized"


BAD_BODIES: list[tuple[bytes, int, str, str]] = [
    (b"{not json", 400, "malformed_json", "malformed JSON"),
    (b"[]", 400, "malformed_json", "JSON object"),
    (b'{"model": "x"}', 422, "invalid_request", "messages"),
    (b'{"messages": []}', 422, "invalid_request", "messages"),
    (b'{"messages": ["hi"]}', 422, "invalid_request", "messages[0]"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 422, "invalid_request", "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text"}]}]}', 422, "invalid_request", "text"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 422, "invalid_request", "stream"),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}',
        422,
        "invalid_request",
        "tools[0]",
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "session_id": "a b"}', 422, "invalid_request", "session_id"),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "metadata": {"segment": "words"}}',
        422,
        "invalid_request",
        "segment",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code", "says"), BAD_BODIES)
async def test_bad_bodies_get_clear_openai_errors(client: Any, raw: bytes, status: int, code: str, says: str) -> None:
    resp = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == status and resp.headers["x-should-retry"] == "false"
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"]


async def test_body_limit_is_larger_here_and_configurable(make_client: MakeClient) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", openai_max_body_bytes=300_000))

    def body(system_chars: int) -> dict[str, Any]:
        system = {"role": "system", "content": "x" * system_chars}
        return {"model": "x", "messages": [system, {"role": "user", "content": "喂"}], "user": "big"}

    assert (await client.post("/v1/chat/completions", json=body(200_000))).status == 200  # over 64 KiB
    too_big = await client.post("/v1/chat/completions", json=body(400_000))
    body = await too_big.json()
    assert too_big.status == 413 and body["error"]["code"] == "payload_too_large"
    assert "300000" in body["error"]["message"]
    assert (await client.post("/chat", json={"sessionId": "a", "text": "x" * 200_000})).status == 413


async def test_wrong_method_and_sdk_errors_do_not_retry(client: Any, sdk: Sdk) -> None:
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        await sdk(client).chat.completions.create(model="x", messages=[])
    assert "messages" in bad.value.message


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


async def upstream_called(emulator: Any) -> Any:
    """The emulator's first completions call, once it has arrived."""
    async with asyncio.timeout(2):
        while not emulator.streams:
            await asyncio.sleep(0.005)
    return emulator.streams[0]


async def stream_until(client: Any, session_id: str, messages: list[Any], *, content: bool) -> tuple[Any, str]:
    """A streamed request read until its role chunk (or its first content): (response, text so far)."""
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "x", "stream": True, "messages": messages},
        headers={"X-Callagent-Session": session_id},
    )
    buffer = b""
    needle = b'"content":"' if content else b'"role":"assistant"'
    async with asyncio.timeout(5):
        while b"\n\n" not in buffer or needle not in buffer.replace(b'"content":""', b""):
            buffer += await resp.content.readany()
    said = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in buffer.decode().split("\n\n")
        if line.startswith("data: {")
    )
    return resp, said


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
    client = await make_client(fastgpt_settings.with_(openai_keepalive=0.05))
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


async def test_a_reply_missing_from_the_history_was_not_heard(client: Any) -> None:
    """The platform kept nothing of the reply (the caller spoke before any of it played)."""
    headers = {"X-Callagent-Session": "oa-absent"}
    first: list[Any] = [{"role": "user", "content": "喂"}]
    assert (await client.post("/v1/chat/completions", json={"messages": first}, headers=headers)).status == 200
    second = [*first, {"role": "user", "content": "方便"}]
    assert (await client.post("/v1/chat/completions", json={"messages": second}, headers=headers)).status == 200
    turn1, turn2 = await transcript(client, "oa-absent")
    assert turn1.status == "completed" and turn1.spoken_text == "" and turn2.spoken_text is None


# -- the tools file -------------------------------------------------------------------------

VAPI_TOOLS = """
[actions.transfer]
stages = ["0001", "0003"]
patterns = ["transfercall"]
after = "正在转接。"

[actions.transfer.arguments]
destination = "+861012345678"
note = "{stage_code} {session_id}"
"""


async def test_a_tools_file_fills_the_platform_s_required_parameters(
    make_client: MakeClient, tmp_path: Any, sdk: Sdk
) -> None:
    (tmp_path / "tools.toml").write_text(VAPI_TOOLS, encoding="utf-8")
    client = await make_client(Settings(upstream="local", store="memory://", tools_file=str(tmp_path / "tools.toml")))
    transfer = {
        "type": "function",
        "function": {
            "name": "transferCall",
            "parameters": {
                "type": "object",
                "properties": {"destination": {"type": "string", "enum": ["+861012345678"]}, "note": {}, "x": {}},
                "required": ["destination", "note", "x"],
            },
        },
    }
    messages: list[Any] = [{"role": "user", "content": "转人工"}]
    reply = await sdk(client).chat.completions.create(model="x", messages=messages, tools=[transfer], user="vapi-1")
    (call,) = reply.choices[0].message.tool_calls or []
    arguments = json.loads(call.function.arguments)
    assert arguments == {
        "stageCode": "0001",
        "stage": "转接人工",
        "destination": "+861012345678",
        "note": "0001 vapi-1",
    }
    messages += [
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "ok"},
    ]
    after = await sdk(client).chat.completions.create(model="x", messages=messages, tools=[transfer], user="vapi-1")
    assert after.choices[0].message.content == "正在转接。"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[actions.x]\nstages = ["0000"]\n', "patterns"),
        ('[actions.x]\nstages = "0000"\npatterns = ["a"]\n', "stages"),
        ('[actions.x]\nstages = []\npatterns = ["a"]\nwhen = 1\n', "unknown keys when"),
        ('[actions.x]\nstages = []\npatterns = ["a"]\narguments = { a = "{nope}" }\n', "arguments.a"),
        ("[actions\n", "tools.toml"),
    ],
)
def test_a_bad_tools_file_stops_start_up_naming_the_place(tmp_path: Any, text: str, says: str) -> None:
    path = tmp_path / "tools.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as bad:
        create_app(Settings(upstream="local", store="memory://", tools_file=str(path)))
    assert says in str(bad.value) and str(path) in str(bad.value)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CALLAGENT_OPENAI_KEEPALIVE": "0"}, "CALLAGENT_OPENAI_KEEPALIVE"),
        ({"CALLAGENT_OPENAI_MAX_BODY_BYTES": "0"}, "CALLAGENT_OPENAI_MAX_BODY_BYTES"),
        ({"CALLAGENT_OPENAI_MODEL": ""}, "CALLAGENT_OPENAI_MODEL"),
        ({"CALLAGENT_TOOLS_FILE": "/nonexistent/tools.toml"}, "CALLAGENT_TOOLS_FILE"),
    ],
)
def test_the_route_s_settings_are_checked_at_start_up(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as bad:
        create_app(Settings.from_env(env | {"CALLAGENT_STORE": "memory://"}, env_file=None))
    assert names in str(bad.value)
