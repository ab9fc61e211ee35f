"""No dead air, no hang, no leak: every upstream failure ends in time with the fallback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from scripts.emulators.fastgpt import DEFAULT_BUILD

from .conftest import BUILDS, body, parse_sse, upstream_settings
from .redis_server import free_port
from .upstream_helpers import FALLBACK, FAST, nothing_left

# Failures FastGPT reports itself, on every release; the deadline faults need no release each.
REPORTED = [
    ("http500", "upstream_error", ""),
    ("error_before", "upstream_quota", ""),
    ("error_mid", "upstream_error", "您好，请问"),
    ("eof", "upstream_protocol", "您好，请问"),
    ("abort", "upstream_protocol", "您好，请问"),
    ("rate_limited", "upstream_rate_limited", ""),
    # Out of AI points mid-run: a paymentPause node (4.14.1+) or an error frame (before).
    ("payment_pause", "upstream_quota", "您好，请问有人受伤吗？"),
    ("interactive_unknown", "upstream_protocol", "您好，请问有人受伤吗？"),
]
DEADLINES = [
    ("no_first_token", "upstream_timeout", ""),
    ("stall", "upstream_timeout", "您好，请问"),
    ("heartbeats_only", "upstream_timeout", ""),
    ("slow_headers", "upstream_timeout", ""),
]


@pytest.mark.parametrize(
    ("emulator_app", "fault", "error_type", "spoken_before_fallback"),
    [(build, *case) for build in BUILDS for case in REPORTED] + [(DEFAULT_BUILD, *case) for case in DEADLINES],
    indirect=["emulator_app"],
)
async def test_fault_ends_with_fallback_then_error(
    make_client: Any, fastgpt_settings: Any, emulator: Any, fault: str, error_type: str, spoken_before_fallback: str
) -> None:
    emulator.set_fault(fault)
    emulator.heartbeat_interval = 0.1
    emulator.fault_after_chunks = 6  # the tag takes the first five 4-character chunks
    emulator.chunk_chars = 4
    client = await make_client(fastgpt_settings.with_(**FAST))
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.post("/chat?stream=true", json=body(text="喂"))
    frames = parse_sse(await resp.read())
    elapsed = loop.time() - started
    assert elapsed < 2.0, f"{fault}: deadline not held ({elapsed:.2f}s)"
    names = [n for n, _ in frames]
    assert names[-1] == "error" and "done" not in names
    error = frames[-1][1]
    assert error["type"] == error_type and error["code"] in ("502", "503", "504") and error["msg"]
    stages = [d["nextStageCode"] for n, d in frames if n == "stage_code"]
    assert stages[-1] == "0001"  # the fallback stage comes last
    text = "".join(d["text"] for n, d in frames if n == "text_delta")
    assert text == spoken_before_fallback + FALLBACK
    await nothing_left(client, emulator.streams)


@pytest.mark.parametrize("fault", ["malformed", "unknown_events", "reasoning", "fast_answer"])
async def test_tolerated_quirks_complete_normally(
    make_client: Any, fastgpt_settings: Any, emulator: Any, fault: str
) -> None:
    emulator.set_fault(fault)
    client = await make_client(fastgpt_settings.with_(**FAST))
    frames = parse_sse(await (await client.post("/chat?stream=true", json=body(text="喂"))).read())
    assert frames[-1] == ("done", frames[-1][1]) and frames[-1][1]["status"] == "completed"
    assert "".join(d["text"] for n, d in frames if n == "text_delta") == "您好，请问有人受伤吗？"
    await nothing_left(client, emulator.streams)


async def test_a_one_megabyte_reply_streams_through(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    emulator.set_fault("big")
    emulator.chunk_chars = 4096
    client = await make_client(fastgpt_settings.with_(**FAST))
    data = await (await client.post("/chat", json=body(text="喂"))).json()
    assert data["status"] == "completed" and len(data["text"].encode()) > 1_000_000
    await nothing_left(client, emulator.streams)


async def test_connection_refused_is_retried_once_then_falls_back(make_client: Any, fastgpt_settings: Any) -> None:
    settings = fastgpt_settings.with_(fastgpt_base_url=f"http://127.0.0.1:{free_port()}", **FAST)
    client = await make_client(settings)
    with capture_logs() as logs:
        data = await (await client.post("/chat", json=body(text="喂"))).json()
    assert data["code"] == "200" and data["nextStageCode"] == "0001" and data["text"] == FALLBACK
    assert data["error"]["type"] == "upstream_unavailable" and data["error"]["code"] == "503"
    assert [e["event"] for e in logs].count("fastgpt_connect_retry") == 1
    await nothing_left(client, [])


@pytest.mark.parametrize(("upstream", "peer"), [("openai", "the model server"), ("dify", "Dify")])
async def test_dify_and_openai_unreachable_are_upstream_unavailable(
    make_client: Any, tmp_path: Any, upstream: str, peer: str
) -> None:
    where = {f"{upstream}_base_url": f"http://127.0.0.1:{free_port()}/v1", f"{upstream}_api_key": "key-secret"}
    settings = upstream_settings(tmp_path, upstream=upstream, openai_model="m", **where).with_(**FAST)
    client = await make_client(settings)
    with capture_logs() as logs:
        data = await (await client.post("/chat", json=body(text="喂"))).json()
    assert data["nextStageCode"] == "0001" and data["text"] == FALLBACK
    error = data["error"]
    assert error["type"] == "upstream_unavailable" and error["msg"].startswith(f"cannot connect to {peer}: ")
    assert "key-secret" not in error["msg"] and "key-secret" not in repr(logs)
    if upstream == "openai":  # the turn's POST (Dify first reads the app's input form, not retried)
        assert [e["event"] for e in logs].count("openai_connect_retry") == 1
    await nothing_left(client, [])


async def test_bad_upstream_key_is_upstream_auth(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    client = await make_client(fastgpt_settings.with_(fastgpt_api_key="fastgpt-wrong", **FAST))
    data = await (await client.post("/chat", json=body(text="喂"))).json()
    assert data["error"]["type"] == "upstream_auth" and data["text"] == FALLBACK


async def test_a_terminal_stage_already_sent_is_kept(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    from scripts.emulators import fastgpt as fe

    emulator.brain = fe.ScriptedBrain(["<state>0003</state>有人受伤，马上为您转接人工，请保持电话畅通。"])
    emulator.set_fault("error_mid")
    emulator.fault_after_chunks = 8
    client = await make_client(fastgpt_settings.with_(**FAST))
    frames = parse_sse(await (await client.post("/chat?stream=true", json=body(text="有人流血"))).read())
    assert [d["nextStageCode"] for n, d in frames if n == "stage_code"] == ["0003"]
    assert FALLBACK not in "".join(d["text"] for n, d in frames if n == "text_delta")
    assert frames[-1][0] == "error"


async def test_without_fallback_json_chat_answers_the_documented_5xx(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.set_fault("no_first_token")
    client = await make_client(fastgpt_settings.with_(fallback_enabled=False, **FAST))
    resp = await client.post("/chat", json=body(text="喂"))
    assert resp.status == 504
    error = await resp.json()
    assert error["type"] == "upstream_timeout" and error["code"] == "504" and "no" in error["msg"]
    frames = parse_sse(await (await client.post("/chat?stream=true", json=body(text="喂"))).read())
    assert [n for n, _ in frames] == ["error"]


async def test_custom_fallback_stage_and_text(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    emulator.set_fault("http500")
    client = await make_client(
        fastgpt_settings.with_(fallback_stage="0000", fallback_text="系统繁忙，请稍后再拨。", **FAST)
    )
    data = await (await client.post("/chat", json=body(text="喂"))).json()
    assert (data["nextStageCode"], data["nextStage"], data["text"]) == ("0000", "结束通话", "系统繁忙，请稍后再拨。")


async def test_whole_turn_deadline(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    from scripts.emulators import fastgpt as fe

    emulator.brain = fe.ScriptedBrain(["<state>1002</state>" + "慢" * 200])
    emulator.chunk_delay = 0.05
    client = await make_client(
        fastgpt_settings.with_(connect_timeout=0.5, first_token_timeout=1, idle_timeout=1, turn_timeout=0.5)
    )
    data = await (await client.post("/chat", json=body(text="喂"))).json()
    assert data["error"]["type"] == "upstream_timeout" and "longer than 0.5s" in data["error"]["msg"]
    assert data["text"].endswith(FALLBACK) and data["nextStageCode"] == "0001"
    await nothing_left(client, emulator.streams)
