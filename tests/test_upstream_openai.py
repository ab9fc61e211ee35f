"""callagent on an OpenAI-compatible model server (the emulator on a real port)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from callagent.settings import Settings
from callagent.upstream.openai_think import ThinkFilter
from scripts.emulators import openai_compat as oe

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


@pytest.fixture
async def openai_server(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(oe.create_emulator_app())


@pytest.fixture
def model(openai_server: TestServer) -> oe.Emulator:
    return openai_server.app[oe.EMULATOR]


@pytest.fixture
def openai_settings(openai_server: TestServer, tmp_path: Path) -> Settings:
    return upstream_settings(
        tmp_path,
        upstream="openai",
        openai_base_url=str(openai_server.make_url("/v1")),
        openai_api_key="openai-test",
        openai_model="test-model",
        openai_extra_body='{"enable_thinking": false}',
    )


@pytest.fixture
async def client(make_client: MakeClient, openai_settings: Settings) -> Any:
    return await make_client(openai_settings)


def roles(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["messages"] if m["role"] != "system"]


async def test_turns_over_json_sse_and_websocket(client: Any, model: oe.Emulator) -> None:
    data = await (await client.post("/chat", json=body("o1", text="喂"))).json()
    assert (data["nextStageCode"], data["text"], data["status"]) == ("1002", "您好，请问有人受伤吗？", "completed")
    frames = await sse_turn(client, "o1", "没有人受伤")
    assert stages(frames) == ["1002"] and spoken(frames) == "您好，请问有人受伤吗？" and frames[-1][0] == "done"
    msgs = await ws_turn(client, "o1", "好的")
    assert msgs[-1]["status"] == "completed" and msgs[0]["nextStageCode"] == "1002"
    request = model.requests[-1]
    assert request["model"] == "test-model" and request["stream"] is True and request["enable_thinking"] is False
    assert len(roles(request)) == 5  # two exchanges, then the new words
    assert (await client.get("/readyz")).status == 200


async def test_history_holds_what_was_heard_and_the_prompt_the_variables(client: Any, model: oe.Emulator) -> None:
    await client.post("/set_info", json=body("o2", key="hphm1", value="沪A8939"))
    await client.post("/chat", json=body("o2", text="喂"))
    await client.post("/chat", json=body("o2", text=""))  # silence
    system = model.requests[-1]["messages"][0]
    assert system["role"] == "system" and "沪A8939" in system["content"] and "{{" not in system["content"]
    assert roles(model.requests[-1]) == [
        ("user", "喂"),
        ("assistant", "<state>1002</state>您好，请问有人受伤吗？"),
        ("user", Settings().silence_text),
    ]


async def test_prompt_file_is_a_template(
    make_client: MakeClient, openai_settings: Settings, model: oe.Emulator, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("车牌{{hphm1}}，地点{{ sgdd | 未知 }}，车数{{n}}，内部{{_step|不给}}，{{x", encoding="utf-8")
    client = await make_client(openai_settings.with_(prompt_file=str(prompt)))
    await client.post("/set_info", json=body("o3", key="hphm1", value="沪A1"))
    await client.post("/set_info", json=body("o3", key="n", value=2))
    await client.post("/set_info", json=body("o3", key="_step", value="secret"))
    await client.post("/chat", json=body("o3", text="喂"))
    system = model.requests[-1]["messages"][0]["content"]
    assert system == "车牌沪A1，地点未知，车数2，内部不给，{{x"


@pytest.mark.parametrize("quirk", ["reasoning", "reasoning_vllm", "think", "malformed", "unknown_fields"])
async def test_reasoning_and_noise_are_never_spoken(client: Any, model: oe.Emulator, quirk: str) -> None:
    model.set_fault(quirk)
    frames = await sse_turn(client, "o4", "喂")
    assert frames[-1][0] == "done" and frames[-1][1]["status"] == "completed"
    assert spoken(frames) == "您好，请问有人受伤吗？" and stages(frames) == ["1002"]
    await nothing_left(client, model.streams, "o4")


@pytest.mark.parametrize(
    ("fault", "error_type", "before"),
    [
        ("http500", "upstream_error", ""),
        ("http429", "upstream_error", ""),
        ("error_before", "upstream_error", ""),
        ("error_mid", "upstream_error", SPOKEN),
        ("error_object", "upstream_error", SPOKEN),
        ("eof", "upstream_protocol", SPOKEN),
        ("abort", "upstream_protocol", SPOKEN),
        ("no_first_token", "upstream_timeout", ""),
        ("keepalive_only", "upstream_timeout", ""),
        ("stall", "upstream_timeout", SPOKEN),
        ("slow_headers", "upstream_timeout", ""),
    ],
)
async def test_fault_ends_with_fallback_then_error(
    make_client: MakeClient, openai_settings: Settings, model: oe.Emulator, fault: str, error_type: str, before: str
) -> None:
    model.set_fault(fault)
    model.fault_after_chunks = 6
    client = await make_client(openai_settings.with_(**FAST))
    await falls_back_in_time(client, fault, error_type, before)
    await nothing_left(client, model.streams)


async def test_a_refused_key_is_upstream_auth_without_the_key(
    make_client: MakeClient, openai_settings: Settings, model: oe.Emulator
) -> None:
    settings = openai_settings.with_(openai_api_key="sk-wrong-secret")
    data = await key_refused(make_client, settings, "o5", "wrong-secret")
    assert data["text"] == FALLBACK


async def test_barge_in_closes_the_stream_and_history_keeps_what_was_heard(client: Any, model: oe.Emulator) -> None:
    model.brain = oe.ScriptedBrain([LONG_REPLY, "<state>1002</state>好的。"])
    model.chunk_delay = 0.05
    assert (await interrupted_turn(client, "o6", "请您先把"))["cancelled"] is True
    (stream,) = model.streams
    await asyncio.wait_for(stream.closed.wait(), 1)
    assert stream.outcome == "disconnected"
    model.chunk_delay = 0
    data = await (await client.post("/chat", json=body("o6", text="移好了"))).json()
    assert data["text"] == "好的。"
    assert roles(model.requests[-1]) == [
        ("user", "喂"),
        ("assistant", "<state>1002</state>请您先把"),
        ("user", "移好了"),
    ]


async def test_a_turn_heard_of_nothing_keeps_strict_alternation(client: Any, model: oe.Emulator) -> None:
    model.brain = oe.ScriptedBrain([LONG_REPLY, "<state>1002</state>好的。"])
    model.chunk_delay = 0.05
    await interrupted_turn(client, "o7", "")
    model.chunk_delay = 0
    data = await (await client.post("/chat", json=body("o7", text="有人吗"))).json()
    assert data["status"] == "completed"  # the strict emulator accepted the history
    assert roles(model.requests[-1]) == [("user", "喂\n有人吗")]


async def test_interrupt_records_delete_drops_the_interrupted_exchange(
    make_client: MakeClient, openai_settings: Settings, model: oe.Emulator
) -> None:
    client = await make_client(openai_settings.with_(interrupt_records="delete"))
    model.brain = oe.ScriptedBrain([LONG_REPLY, "<state>1002</state>好的。"])
    model.chunk_delay = 0.05
    await interrupted_turn(client, "o12", "请您先把")
    model.chunk_delay = 0
    await client.post("/chat", json=body("o12", text="移好了"))
    assert roles(model.requests[-1]) == [("user", "移好了")]


async def test_a_failed_turn_keeps_strict_alternation(client: Any, model: oe.Emulator) -> None:
    model.set_fault("http500", count=1)
    await client.post("/chat", json=body("o8", text="喂"))
    data = await (await client.post("/chat", json=body("o8", text="还在吗"))).json()
    assert data["status"] == "completed"
    assert roles(model.requests[-1]) == [
        ("user", "喂"),
        ("assistant", f"<state>0001</state>{FALLBACK}"),
        ("user", "还在吗"),
    ]


async def test_delete_last_turn_and_delete_session_shape_the_history(client: Any, model: oe.Emulator) -> None:
    model.brain = oe.ScriptedBrain(["<state>1002</state>一。", "<state>1002</state>二。", "<state>1002</state>三。"])
    await client.post("/chat", json=body("o9", text="甲"))
    await client.post("/chat", json=body("o9", text="乙"))
    deleted = await (await client.post("/delete_last_turn", json=body("o9"))).json()
    assert deleted["code"] == "200" and deleted["turnId"]
    await client.post("/chat", json=body("o9", text="丙"))
    assert roles(model.requests[-1]) == [("user", "甲"), ("assistant", "<state>1002</state>一。"), ("user", "丙")]
    assert (await client.delete("/delete_session", params={"sessionId": "o9", "timeStamp": "1"})).status == 200
    await client.post("/chat", json=body("o9", text="丁"))
    assert roles(model.requests[-1]) == [("user", "丁")]


async def test_history_is_bounded(make_client: MakeClient, openai_settings: Settings, model: oe.Emulator) -> None:
    client = await make_client(openai_settings.with_(openai_history_turns=1))
    for text in ("一", "二", "三"):
        await client.post("/chat", json=body("o10", text=text))
    assert [c for r, c in roles(model.requests[-1]) if r == "user"] == ["二", "三"]


async def test_gateway_hanging_up_closes_the_model_stream(client: Any, model: oe.Emulator) -> None:
    model.brain = oe.ScriptedBrain([LONG_REPLY])
    model.chunk_delay = 0.05
    resp = await client.post("/chat?stream=true", json=body("o11", text="喂"))
    await first_frame(resp, "text_delta")
    resp.close()
    (stream,) = model.streams
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert stream.outcome == "disconnected"
    await nothing_left(client, [], "o11")


async def test_bad_settings_name_the_variable(tmp_path: Path) -> None:
    from callagent.settings import ConfigError

    with pytest.raises(ConfigError, match="OPENAI_BASE_URL, OPENAI_MODEL"):
        Settings(upstream="openai")
    with pytest.raises(ConfigError, match="OPENAI_EXTRA_BODY"):
        Settings(upstream="openai", openai_base_url="http://x/v1", openai_model="m", openai_extra_body="[1]")
    with pytest.raises(ConfigError, match="CALLAGENT_PROMPT_FILE"):
        Settings(prompt_file=str(tmp_path / "missing.txt"))
    assert "secret-key" not in repr(Settings(openai_api_key="secret-key"))  # type: ignore[arg-type]


@given(st.lists(st.integers(0, 45), max_size=8))
def test_think_blocks_are_dropped_wherever_the_stream_cuts(cuts: list[int]) -> None:
    text = "<think>先确认是否有人受伤。</think>\n\n<state>1002</state>您好，<th>请问</think有人受伤吗？"
    bounds = [0, *sorted(cuts), len(text)]
    think = ThinkFilter()
    out = "".join(think.feed(text[a:b]) for a, b in itertools.pairwise(bounds)) + think.finish()
    assert out == "<state>1002</state>您好，<th>请问</think有人受伤吗？"


async def test_whole_turn_deadline(make_client: MakeClient, openai_settings: Settings, model: oe.Emulator) -> None:
    model.brain = oe.ScriptedBrain([LONG_REPLY])
    model.chunk_delay = 0.05
    client = await turn_over_deadline(make_client, openai_settings, "o13")
    await nothing_left(client, model.streams, "o13")
