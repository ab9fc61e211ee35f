"""FastGPT from 4.8 to 4.15 with the client on its defaults: barge-in then the next turn,
the next turn right after a reply (FastGPT still saving it), interactive nodes by voice,
and the one edge where FastGPT's failures become typed errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callagent.errors import (
    UpstreamAuth,
    UpstreamBusy,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRejected,
)
from callagent.upstream.fastgpt import choose_option
from callagent.upstream.fastgpt.errors import error_from, error_from_body
from scripts.emulators import fastgpt as fe

from .conftest import body, every_build

LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，打开双闪。" * 6
NEXT_REPLY = "<state>0001</state>好的，马上为您转接人工。"


def completions(emulator: Any) -> list[Any]:
    return [r for r in emulator.requests if r.path.endswith("/chat/completions")]


async def chat(client: Any, text: str, session: str = "a1002") -> dict[str, Any]:
    data: dict[str, Any] = await (await client.post("/chat", json=body(session, text=text))).json()
    return data


@every_build
async def test_barge_in_then_the_next_turn_at_once(fastgpt_client: Any, emulator: Any) -> None:
    """The interrupted run goes on upstream (a slow node): 4.14.11+ refuse the next run with
    504001 until it is stopped; the caller must hear the reply, never the fallback."""
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, NEXT_REPLY])
    emulator.chunk_delay = 0.02
    emulator.finish_delay = 2.0  # without the stop API the old run saves only after this
    resp = await fastgpt_client.post("/chat?stream=true", json=body(text="喂"))
    await resp.content.readuntil(b"event: text_delta")
    answer = await chat(fastgpt_client, "有人受伤")
    assert b'"status":"cancelled"' in await resp.read()
    assert (answer["status"], answer["text"]) == ("completed", "好的，马上为您转接人工。")
    refused = [s for s in emulator.streams if s.outcome == "refused"]
    stops = [r for r in emulator.requests if r.path == "/api/v2/chat/stop"]
    if emulator.build.chat_is_generating and not emulator.build.v1_stops_on_disconnect:
        assert refused and stops, "504001 was answered by stopping the old run and retrying"
    else:
        assert not refused


@pytest.mark.parametrize("emulator_app", ["4.14.11"], indirect=True)
async def test_a_timeout_then_the_next_turn_at_once(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    """A stalled run that hit the idle deadline is still running upstream: the next turn gets
    its reply all the same (stop, then retry the 504001)."""
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, NEXT_REPLY])
    emulator.finish_delay = 30.0
    emulator.fault_after_chunks = 8
    emulator.set_fault("stall", count=1)
    client = await make_client(fastgpt_settings.with_(first_token_timeout=0.5, idle_timeout=0.3))
    assert (await chat(client, "喂"))["error"]["type"] == "upstream_timeout"
    answer = await chat(client, "有人受伤")
    assert (answer["status"], answer["text"]) == ("completed", "好的，马上为您转接人工。")
    assert [s.outcome for s in emulator.streams].count("refused") >= 1


@every_build
async def test_an_answer_right_after_the_question_resumes_the_run(fastgpt_client: Any, emulator: Any) -> None:
    """The next turn waits for FastGPT to finish saving the question's run (bounded), so the
    answer resumes it instead of starting a fresh run or meeting 504001."""
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的。", "<state>2000</state>请拍照。"])
    emulator.save_delay = 0.2  # between workflowDuration and [DONE]
    emulator.set_fault("interactive", count=1)
    asked = await chat(fastgpt_client, "喂")
    assert asked["text"].endswith("可选：单车事故、多车事故。")
    answered = await chat(fastgpt_client, "第二个")
    assert (answered["status"], answered["text"]) == ("completed", "请拍照。")
    assert completions(emulator)[-1].body["messages"][0]["content"] == "多车事故"
    # A resumed run adds no record pair: FastGPT appended to the question's AI record.
    assert len(emulator.chat("a1002").records) == 2
    assert not [s for s in emulator.streams if s.outcome == "refused"]


@every_build
async def test_words_matching_no_option_are_never_sent(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的。", "<state>2000</state>请拍照。"])
    emulator.set_fault("interactive_nested", count=1)  # the node inside two wrappers
    await chat(fastgpt_client, "喂")
    sent = len(completions(emulator))
    again = await chat(fastgpt_client, "我也不知道")
    assert again["status"] == "completed" and len(completions(emulator)) == sent
    assert again["text"] == "抱歉，没有听清您的选择。请问是单车事故还是多车事故？可选：单车事故、多车事故。"
    answered = await chat(fastgpt_client, "单车")
    assert answered["text"] == "请拍照。"
    assert completions(emulator)[-1].body["messages"][0]["content"] == "单车事故"


@every_build
async def test_a_form_is_filled_by_voice_then_sent_as_json(fastgpt_client: Any, emulator: Any) -> None:
    seen: list[str] = []

    def reply(chat_id: str, text: str, variables: dict[str, Any]) -> str:
        seen.append(text)
        return "<state>2000</state>信息已登记。" if len(seen) > 1 else "<state>1002</state>好的。"

    emulator.brain = fe.ScriptedBrain(reply)
    emulator.set_fault("interactive_form", count=1)
    asked = await chat(fastgpt_client, "喂")
    assert asked["text"] == "好的。请补充事故信息。请说一下车牌号。"
    assert (await chat(fastgpt_client, "沪A8939"))["text"] == "请说一下车辆数。"
    assert (await chat(fastgpt_client, "不清楚"))["text"] == "抱歉，没有听清。请说一下车辆数。"
    assert (await chat(fastgpt_client, "2"))["text"] == "请说一下是否有人受伤。可选：有人受伤、无人受伤。"
    done = await chat(fastgpt_client, "没有人受伤")
    assert (done["status"], done["text"]) == ("completed", "信息已登记。")
    assert len(completions(emulator)) == 2, "the fields were collected without calling FastGPT"
    assert seen[-1] == '{"plate":"沪A8939","cars":2,"injured":"无人受伤"}'


@every_build
async def test_deleting_a_resume_turn_deletes_nothing_upstream(fastgpt_client: Any, emulator: Any) -> None:
    emulator.set_fault("interactive", count=1)
    await chat(fastgpt_client, "喂")
    await chat(fastgpt_client, "单车事故")
    records = list(emulator.chat("a1002").records)
    resp = await fastgpt_client.post("/delete_last_turn", json=body())
    assert resp.status == 200
    assert emulator.chat("a1002").records == records, "the question's records stay"
    assert not [r for r in emulator.requests if r.path.endswith("/delete")]


@every_build
async def test_what_is_sent_with_a_turn(fastgpt_client: Any, emulator: Any) -> None:
    """appId rides along (account keys need it); internal `_` variables never leave callagent;
    from 4.11 only the variables the app declares reach the workflow."""
    emulator.declared_variables = {"sjhm": "手机号"}
    seen: list[dict[str, Any]] = []

    def reply(chat_id: str, text: str, variables: dict[str, Any]) -> str:
        seen.append(variables)
        return "<state>1002</state>好的。"

    emulator.brain = fe.ScriptedBrain(reply)
    await fastgpt_client.post("/set_info", json=body(key="sjhm", value="13812345678"))
    await fastgpt_client.post("/set_info", json=body(key="undeclared", value="x"))
    await chat(fastgpt_client, "喂")
    sent = completions(emulator)[-1].body
    assert sent["appId"] == "app1" and sent["variables"] == {"sjhm": "13812345678", "undeclared": "x"}
    declared_only = emulator.build.declared_variables
    assert seen == [{"sjhm": "13812345678"} if declared_only else {"sjhm": "13812345678", "undeclared": "x"}]


@every_build
async def test_readiness_and_a_deleted_session_on_every_release(fastgpt_client: Any, emulator: Any) -> None:
    assert (await fastgpt_client.get("/readyz")).status == 200
    await chat(fastgpt_client, "喂")
    assert (await fastgpt_client.delete("/delete_session", json=body())).status == 200
    assert emulator.chat("a1002") is None


async def test_a_slow_save_does_not_hold_the_next_turn_long(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    """The wait for the previous run's end of stream is bounded (DRAIN_WAIT)."""
    emulator.save_delay = 30.0  # FastGPT hangs while saving
    client = await make_client(fastgpt_settings)
    assert (await chat(client, "喂"))["status"] == "completed"
    loop = asyncio.get_running_loop()
    started = loop.time()
    emulator.save_delay = 0.0
    assert (await chat(client, "有人受伤"))["status"] == "completed"
    assert loop.time() - started < 4.0


def test_choosing_an_option_from_spoken_words() -> None:
    options = ["单车事故", "多车事故"]
    assert choose_option("是多车事故", options) == "多车事故"
    assert choose_option("单车。", options) == "单车事故"
    assert choose_option("第二个", options) == "多车事故"
    assert choose_option("车", options) is None, "ambiguous words pick nothing"
    assert choose_option("不知道", options) is None
    assert choose_option("没有人受伤", ["有人受伤", "无人受伤"]) == "无人受伤"


@pytest.mark.parametrize(
    ("status", "payload", "error"),
    [
        (200, {"code": 514, "statusText": "unAuthApiKey", "message": "Api Key 不合法"}, UpstreamAuth),
        (500, {"code": 502000, "statusText": "appUnExist", "message": "应用不存在"}, UpstreamAuth),
        (500, {"code": 506001, "statusText": "", "message": "key"}, UpstreamAuth),
        (403, {"code": 403, "statusText": "unAuthorization", "message": ""}, UpstreamAuth),
        (200, {"code": 504001, "statusText": "chatIsGenerating", "message": ""}, UpstreamBusy),
        (429, {"code": 429, "message": "slow down"}, UpstreamRateLimited),
        (400, {"code": 400, "message": "chatId must be a string"}, UpstreamRejected),
        (500, {"code": 510, "statusText": "insufficientQuota", "message": "账号余额不足"}, UpstreamQuota),
        (200, {"statusText": "aiPointsNotEnough", "message": "AI 积分不足"}, UpstreamQuota),
        (500, {"code": 500, "message": "boom"}, UpstreamError),
        (502, None, UpstreamError),
    ],
)
def test_the_error_edge(status: int, payload: Any, error: type[UpstreamError]) -> None:
    got = error_from(status, payload)
    assert type(got) is error and got.msg


def test_a_lone_error_frame_is_read_as_the_error_it_carries() -> None:
    raw = b'event: error\ndata: {"code":504001,"statusText":"chatIsGenerating","message":"x"}\n\n'
    assert isinstance(error_from_body(200, raw), UpstreamBusy)
    assert type(error_from_body(502, b"<html>Bad Gateway</html>")) is UpstreamError
