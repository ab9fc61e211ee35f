"""The OpenAI-compatible route driven by the official ``openai`` SDK, against the local agent.

A whole intake call ending in the hang-up tool, a transfer on injury, usage, clause
segmentation, tool results, sessions, the tools file and the route's settings, over real
sockets. ``max_retries=0``: a retry would hide a bug.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import structlog

from callagent.settings import ConfigError, Settings
from callagent.web.app import create_app

from .conftest import MakeClient
from .openai_support import SYSTEM, TOOLS, Call, Sdk, sdk_clients, transcript


@pytest.fixture
async def sdk() -> AsyncIterator[Sdk]:
    async with sdk_clients() as make:
        yield make


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
    assert choice.finish_reason == "tool_calls" and "幺二零" in (choice.message.content or "")
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
        ({"CALLAGENT_OPENAI_ROUTE_KEEPALIVE": "0"}, "CALLAGENT_OPENAI_ROUTE_KEEPALIVE"),
        ({"CALLAGENT_OPENAI_ROUTE_MAX_BODY_BYTES": "0"}, "CALLAGENT_OPENAI_ROUTE_MAX_BODY_BYTES"),
        ({"CALLAGENT_OPENAI_ROUTE_MODEL": ""}, "CALLAGENT_OPENAI_ROUTE_MODEL"),
        ({"CALLAGENT_TOOLS_FILE": "/nonexistent/tools.toml"}, "CALLAGENT_TOOLS_FILE"),
    ],
)
def test_the_route_s_settings_are_checked_at_start_up(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as bad:
        create_app(Settings.from_env(env | {"CALLAGENT_STORE": "memory://"}, env_file=None))
    assert names in str(bad.value)
