"""callagent on a Dify app (the emulator on a real port)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from callagent.settings import ConfigError, Settings
from scripts.emulators import dify as de

from .conftest import MakeClient, body, upstream_settings
from .upstream_helpers import (
    FALLBACK,
    FAST,
    LONG_REPLY,
    SPOKEN,
    falls_back_in_time,
    first_frame,
    interrupted_turn,
    key_refused,
    nothing_left,
    spoken,
    sse_turn,
    stages,
    turn_over_deadline,
    ws_turn,
)

FORM = [
    {"text-input": {"label": "车牌", "variable": "hphm1", "required": True, "max_length": 20}},
    {"number": {"label": "车辆数", "variable": "vehicles", "required": False}},
    {"select": {"label": "事故类型", "variable": "sgcl", "required": False, "options": ["单车", "多车"]}},
]


@pytest.fixture
async def dify_server(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(de.create_emulator_app())


@pytest.fixture
def dify(dify_server: TestServer) -> de.Emulator:
    return dify_server.app[de.EMULATOR]


@pytest.fixture
def dify_settings(dify_server: TestServer, tmp_path: Path) -> Settings:
    return upstream_settings(
        tmp_path,
        upstream="dify",
        dify_base_url=str(dify_server.make_url("/v1")),  # as Dify's UI shows it
        dify_api_key="dify-test",
    )


@pytest.fixture
async def client(make_client: MakeClient, dify_settings: Settings) -> Any:
    return await make_client(dify_settings)


def chat_requests(dify: de.Emulator) -> list[dict[str, Any]]:
    return [b for m, p, b in dify.requests if p == "/v1/chat-messages"]


async def variable(client: Any, session_id: str, key: str) -> Any:
    return (await (await client.post("/get_info", json=body(session_id, key=key))).json())["value"]


async def stopped(dify: de.Emulator, count: int = 1) -> list[de.StopCall]:
    """The stop calls, once ``count`` have arrived."""
    async with asyncio.timeout(2):
        while len(dify.stops) < count:
            await asyncio.sleep(0.005)
    return dify.stops


async def test_turns_over_json_sse_and_websocket_share_one_conversation(client: Any, dify: de.Emulator) -> None:
    data = await (await client.post("/chat", json=body("d1", text="喂"))).json()
    assert (data["nextStageCode"], data["text"], data["status"]) == ("1002", "您好，请问有人受伤吗？", "completed")
    frames = await sse_turn(client, "d1", "没有人受伤")
    assert stages(frames) == ["1002"] and spoken(frames) == "您好，请问有人受伤吗？"
    msgs = await ws_turn(client, "d1", "好的")
    assert msgs[-1]["status"] == "completed"
    (conversation,) = dify.conversations.values()
    assert conversation.user == "d1" and len(conversation.messages) == 3
    first, *later = chat_requests(dify)
    assert first["conversation_id"] == "" and first["response_mode"] == "streaming" and first["user"] == "d1"
    assert [r["conversation_id"] for r in later] == [conversation.id] * 2
    assert (await client.get("/readyz")).status == 200


async def test_declared_inputs_go_typed_on_the_first_turn_only(client: Any, dify: de.Emulator) -> None:
    dify.user_input_form = FORM
    for key, value in (("hphm1", "沪A8939"), ("vehicles", "2"), ("sgcl", "单车"), ("other", "不声明")):
        await client.post("/set_info", json=body("d2", key=key, value=value))
    await client.post("/chat", json=body("d2", text="喂"))
    await client.post("/set_info", json=body("d2", key="hphm1", value="沪B1"))
    await client.post("/chat", json=body("d2", text="好"))
    first, second = chat_requests(dify)
    assert first["inputs"] == {"hphm1": "沪A8939", "vehicles": 2, "sgcl": "单车"}
    assert second["inputs"] == {}
    (conversation,) = dify.conversations.values()
    assert conversation.inputs == first["inputs"]


async def test_a_missing_required_input_fails_the_turn_with_dify_s_reason(client: Any, dify: de.Emulator) -> None:
    dify.user_input_form = FORM
    data = await (await client.post("/chat", json=body("d3", text="喂"))).json()
    assert data["error"]["type"] == "upstream_error" and "hphm1 is required" in data["error"]["msg"]
    assert data["text"] == FALLBACK and data["nextStageCode"] == "0001"


async def test_conversation_variables_are_mirrored_and_changes_pushed(client: Any, dify: de.Emulator) -> None:
    dify.variable_declarations = [("case_step", "string", ""), ("injured", "boolean", False)]

    def brain(query: str, conversation: de.Conversation) -> str:
        conversation.variables["case_step"].value = f"after:{query}"  # a Variable Assigner node
        return "<state>1002</state>好的。"

    dify.brain = de.ScriptedBrain(brain)
    await client.post("/chat", json=body("d4", text="一"))
    assert await variable(client, "d4", "case_step") == "after:一"
    assert await variable(client, "d4", "injured") is False
    await client.post("/set_info", json=body("d4", key="injured", value="是"))
    await client.post("/chat", json=body("d4", text="二"))
    puts = [(p.rsplit("/", 1)[1], b) for m, p, b in dify.requests if m == "PUT"]
    (conversation,) = dify.conversations.values()
    assert puts == [(conversation.variables["injured"].id, {"value": True, "user": "d4"})]
    assert conversation.variables["injured"].value is True
    assert await variable(client, "d4", "injured") is True  # read back as Dify holds it
    await client.post("/chat", json=body("d4", text="三"))
    assert len([m for m, _, _ in dify.requests if m == "PUT"]) == 1  # nothing changed: nothing pushed


@pytest.mark.parametrize("mode", ["chat", "agent-chat"])
async def test_chat_and_agent_apps_are_spoken_once(client: Any, dify: de.Emulator, mode: str) -> None:
    dify.mode = mode
    frames = await sse_turn(client, "d5", "喂")
    assert spoken(frames) == "您好，请问有人受伤吗？" and frames[-1][1]["status"] == "completed"


@pytest.mark.parametrize(
    ("quirk", "style", "expected"),
    [
        ("malformed", "ascii", "您好，请问有人受伤吗？"),
        ("unknown_events", "compact", "您好，请问有人受伤吗？"),
        ("reasoning", "ascii", "您好，请问有人受伤吗？"),
        ("paused", "compact", SPOKEN),
        ("moderation", "ascii", SPOKEN + de.REPLACEMENT),
    ],
)
async def test_quirks_complete_with_only_the_answer_spoken(
    client: Any, dify: de.Emulator, quirk: str, style: str, expected: str
) -> None:
    dify.set_fault(quirk)
    dify.json_style = style
    dify.fault_after_chunks = 6
    frames = await sse_turn(client, "d6", "喂")
    assert frames[-1][0] == "done" and frames[-1][1]["status"] == "completed"
    assert spoken(frames) == expected and stages(frames) == ["1002"]
    await nothing_left(client, dify.tasks, "d6")
    assert dify.stops == []  # the task ended in Dify: nothing to stop


@pytest.mark.parametrize(
    ("fault", "error_type", "before", "stop"),
    [
        ("http500", "upstream_error", "", False),
        ("http400", "upstream_error", "", False),
        ("error_before", "upstream_error", "", False),
        ("error_mid", "upstream_error", SPOKEN, False),
        ("workflow_failed", "upstream_error", SPOKEN, False),
        ("eof", "upstream_protocol", SPOKEN, True),
        ("abort", "upstream_protocol", SPOKEN, True),
        ("stall", "upstream_timeout", SPOKEN, True),
        ("no_first_token", "upstream_timeout", "", False),  # no event yet: no task id to stop
        ("pings_only", "upstream_timeout", "", False),
        ("slow_headers", "upstream_timeout", "", False),
    ],
)
async def test_fault_ends_with_fallback_then_error(
    make_client: MakeClient,
    dify_settings: Settings,
    dify: de.Emulator,
    fault: str,
    error_type: str,
    before: str,
    stop: bool,
) -> None:
    dify.set_fault(fault)
    dify.fault_after_chunks = 6
    dify.ping_interval = 0.1
    client = await make_client(dify_settings.with_(**FAST))
    await falls_back_in_time(client, fault, error_type, before)
    await nothing_left(client, [t for t in dify.tasks if t.fault != "slow_headers"])
    if stop:
        (call,) = await stopped(dify)
        assert call.user == "a1002" and call.matched and call.task_id == dify.tasks[0].task_id
    else:
        assert dify.stops == []


async def test_barge_in_stops_the_dify_task_as_the_same_user(client: Any, dify: de.Emulator) -> None:
    dify.brain = de.ScriptedBrain([LONG_REPLY, "<state>1002</state>好的。"])
    dify.chunk_delay = 0.05
    assert (await interrupted_turn(client, "d7", "请您先把"))["cancelled"]
    (call,) = await stopped(dify)
    (task,) = dify.tasks
    assert (call.task_id, call.user, call.matched) == (task.task_id, "d7", True)
    await asyncio.wait_for(task.ended.wait(), 2)
    assert task.outcome == "stopped" and task.stream_outcome == "disconnected"
    dify.chunk_delay = 0
    second = await (await client.post("/chat", json=body("d7", text="移好了"))).json()
    assert second["text"] == "好的。" and chat_requests(dify)[-1]["conversation_id"] == task.conversation_id


async def test_a_new_turn_and_a_hang_up_stop_the_running_task(client: Any, dify: de.Emulator) -> None:
    dify.brain = de.ScriptedBrain([LONG_REPLY, LONG_REPLY])
    dify.chunk_delay = 0.05
    first = await client.post("/chat?stream=true", json=body("d8", text="喂"))
    await first_frame(first, "text_delta")
    second = await client.post("/chat?stream=true", json=body("d8", text="转人工"))
    await first_frame(second, "text_delta")
    second.close()  # the gateway hangs up
    calls = await stopped(dify, 2)
    assert [c.task_id for c in calls] == [t.task_id for t in dify.tasks] and all(c.matched for c in calls)
    await nothing_left(client, dify.tasks, "d8")


async def test_silence_is_sent_as_the_silence_text(client: Any, dify: de.Emulator) -> None:
    data = await (await client.post("/chat", json=body("d9", text=""))).json()
    assert data["status"] == "completed" and chat_requests(dify)[-1]["query"] == Settings().silence_text


async def test_delete_last_turn_is_not_supported(client: Any, dify: de.Emulator) -> None:
    await client.post("/chat", json=body("d10", text="喂"))
    resp = await client.post("/delete_last_turn", json=body("d10"))
    assert resp.status == 501
    error = await resp.json()
    assert error["type"] == "not_supported" and error["code"] == "501" and "Dify" in error["msg"]


async def test_delete_session_deletes_the_user_s_conversations(client: Any, dify: de.Emulator) -> None:
    await client.post("/chat", json=body("d11", text="喂"))
    await client.post("/chat", json=body("other", text="喂"))
    resp = await client.delete("/delete_session", params={"sessionId": "d11", "timeStamp": "1"})
    assert resp.status == 200
    assert [c.user for c in dify.conversations.values()] == ["other"]
    deletes = [(p, b) for m, p, b in dify.requests if m == "DELETE"]
    assert len(deletes) == 1 and deletes[0][1] == {"user": "d11"}
    await client.post("/chat", json=body("d11", text="喂"))  # a new call of the same id: a new conversation
    assert chat_requests(dify)[-1]["conversation_id"] == ""


async def test_a_conversation_gone_in_dify_is_started_again(client: Any, dify: de.Emulator) -> None:
    dify.user_input_form = FORM
    await client.post("/set_info", json=body("d12", key="hphm1", value="沪A8939"))
    await client.post("/chat", json=body("d12", text="喂"))
    dify.conversations.clear()  # deleted from Dify's console
    data = await (await client.post("/chat", json=body("d12", text="还在吗"))).json()
    assert data["status"] == "completed"
    assert chat_requests(dify)[-1]["conversation_id"] == "" and chat_requests(dify)[-1]["inputs"]["hphm1"]


async def test_a_refused_key_is_upstream_auth(make_client: MakeClient, dify_settings: Settings) -> None:
    await key_refused(make_client, dify_settings.with_(dify_api_key="dify-wrong-secret"), "d13", "wrong-secret")


def test_settings_are_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="DIFY_BASE_URL, DIFY_API_KEY"):
        Settings(upstream="dify")
    with pytest.raises(ConfigError, match="CALLAGENT_INTERRUPT_RECORDS"):
        Settings(upstream="dify", dify_base_url="http://d", dify_api_key="k", interrupt_records="delete")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CALLAGENT_UPSTREAM"):
        Settings(upstream="coze")


async def test_whole_turn_deadline_stops_the_task(
    make_client: MakeClient, dify_settings: Settings, dify: de.Emulator
) -> None:
    dify.brain = de.ScriptedBrain([LONG_REPLY])
    dify.chunk_delay = 0.05
    client = await turn_over_deadline(make_client, dify_settings, "d14")
    (call,) = await stopped(dify)
    assert (call.user, call.matched) == ("d14", True)
    await nothing_left(client, dify.tasks, "d14")


async def test_shutdown_stops_the_running_task_before_closing(
    make_client: MakeClient, dify_settings: Settings, dify: de.Emulator
) -> None:
    dify.brain = de.ScriptedBrain([LONG_REPLY])
    dify.chunk_delay = 0.05
    client = await make_client(dify_settings.with_(shutdown_timeout=0.1))
    resp = await client.post("/chat?stream=true", json=body("d15", text="喂"))
    await first_frame(resp, "text_delta")
    await client.close()  # shutdown: the turn is cancelled, its stop call awaited, then the session closed
    (call,) = dify.stops
    assert (call.user, call.matched) == ("d15", True)
    (task,) = dify.tasks
    await asyncio.wait_for(task.ended.wait(), 2)
    assert task.outcome == "stopped"
