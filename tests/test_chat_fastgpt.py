"""The original HTTP + SSE API over FastGPT (the emulator on a real port), SQLite store.

Every test runs against each FastGPT release the emulator can be, with the client on its
defaults: an operator does not say which release they run."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from callagent.web.keys import STORE
from scripts.emulators import fastgpt as fe

from .canary import CANARY_KEY
from .conftest import body, every_build, parse_sse

REPLY = "<state>1002</state>您好，请问有人受伤吗？"


def completions(emulator: Any) -> list[Any]:
    return [r for r in emulator.requests if r.path.endswith("/chat/completions")]


@every_build
async def test_sse_frames_are_the_original_bytes(fastgpt_client: Any, emulator: Any) -> None:
    resp = await fastgpt_client.post("/chat?stream=true", json=body(text="发生了交通事故"))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    raw = await resp.read()
    assert b"id:" not in raw and b"retry:" not in raw and b"\r" not in raw
    frames = parse_sse(raw)
    events = [name for name, _ in frames]
    assert events[0] == "stage_code" and events[-1] == "done"
    assert set(events[1:-1]) == {"text_delta"}
    assert {k: frames[0][1][k] for k in ("nextStageCode", "nextStage")} == {
        "nextStageCode": "1002",
        "nextStage": "通话中",
    }
    assert "".join(d["text"] for n, d in frames if n == "text_delta") == "您好，请问有人受伤吗？"
    assert frames[-1][1]["status"] == "completed"
    assert [d["seq"] for _, d in frames] == list(range(1, len(frames) + 1))
    assert len({d["turnId"] for _, d in frames}) == 1
    # The first frame on the wire is exactly the original's layout (extra fields appended).
    first = raw.split(b"\n\n")[0]
    assert first.startswith(
        b'event: stage_code\ndata: {"nextStageCode":"1002","nextStage":"\xe9\x80\x9a\xe8\xaf\x9d\xe4\xb8\xad"'
    )


@every_build
async def test_stream_flag_in_body_is_accepted(fastgpt_client: Any) -> None:
    resp = await fastgpt_client.post("/chat", json=body(text="喂", stream=True))
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert parse_sse(await resp.read())[-1][0] == "done"


async def test_a_slow_sse_turn_is_pinged_between_frames(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    emulator.first_chunk_delay = 0.4
    client = await make_client(fastgpt_settings.with_(sse_ping_interval=0.1))
    resp = await client.post("/chat?stream=true", json=body(text="喂"))
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["Transfer-Encoding"] == "chunked"
    raw = await resp.read()
    head, _, rest = raw.partition(b"event: ")
    assert head.startswith(b": ping\n\n") and set(head.split(b"\n\n")) == {b": ping", b""}
    assert parse_sse(b"event: " + rest)[-1][1]["status"] == "completed"


@every_build
async def test_json_reply_is_the_folded_stream(fastgpt_client: Any, emulator: Any) -> None:
    resp = await fastgpt_client.post("/chat", json=body(text="发生了交通事故"))
    assert resp.status == 200
    data = await resp.json()
    assert data["code"] == "200" and data["msg"] == "success"
    assert (data["sessionId"], data["timeStamp"]) == ("a1002", "202503310303")
    assert (data["nextStageCode"], data["nextStage"]) == ("1002", "通话中")
    assert data["text"] == "您好，请问有人受伤吗？"
    raw = await resp.read()
    assert "通话中".encode() in raw, "non-ASCII must not be escaped"
    # What FastGPT received: always stream + detail, our record ids, the session as chatId.
    (req,) = completions(emulator)
    sent = req.body
    assert sent["stream"] is True and sent["detail"] is True and sent["chatId"] == "a1002"
    assert sent["messages"] == [{"role": "user", "content": "发生了交通事故", "dataId": f"{data['turnId']}-q"}]
    assert sent["responseChatItemId"] == f"{data['turnId']}-a"
    assert req.headers["Authorization"] == f"Bearer {CANARY_KEY}"


@every_build
async def test_last_of_several_tags_wins(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的，<state>2017</state>请补充信息。"])
    data = await (await fastgpt_client.post("/chat", json=body(text="好"))).json()
    assert (data["nextStageCode"], data["nextStage"]) == ("2016", "进入信息补录")
    assert data["text"] == "好的，请补充信息。"
    resp = await fastgpt_client.post("/chat?stream=true", json=body(text="好"))
    stages = [d["nextStageCode"] for n, d in parse_sse(await resp.read()) if n == "stage_code"]
    assert stages == ["1002", "2016"]


@every_build
async def test_variables_round_trip_and_go_upstream(fastgpt_client: Any, emulator: Any) -> None:
    resp = await fastgpt_client.post("/set_info", json=body(key="hphm1", value="沪A8939"))
    assert await resp.json() == {"code": "200", "msg": "success", "sessionId": "a1002", "timeStamp": "202503310303"}
    got = await (await fastgpt_client.post("/get_info", json=body(key="hphm1"))).json()
    assert (got["key"], got["value"]) == ("hphm1", "沪A8939")
    got = await (await fastgpt_client.get("/get_info", params={"sessionId": "a1002", "key": "nope"})).json()
    assert got["value"] is None
    await fastgpt_client.post("/chat", json=body(text="车牌是沪A8939"))
    assert completions(emulator)[-1].body["variables"] == {"hphm1": "沪A8939"}


@every_build
async def test_workflow_variables_are_mirrored_without_asking_fastgpt(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(
        lambda chat, text, variables: ["<state>1002</state>好的。", {"sjhm": "13812345678"}]
    )
    await fastgpt_client.post("/chat", json=body(text="13812345678"))
    before = len(emulator.requests)
    info = (await (await fastgpt_client.post("/get_info", json=body())).json())["info"]
    assert info == {"sjhm": "13812345678"}
    assert len(emulator.requests) == before, "get_info must not call FastGPT"


def record_ids(emulator: Any, turn_id: str) -> list[str]:
    """The dataIds FastGPT stores for a turn (4.15: the Human record takes the AI record's id)."""
    human = f"{turn_id}-a" if emulator.build.human_id_is_response_id else f"{turn_id}-q"
    return [human, f"{turn_id}-a"]


@every_build
async def test_delete_last_turn_deletes_exactly_its_two_records(fastgpt_client: Any, emulator: Any) -> None:
    first = await (await fastgpt_client.post("/chat", json=body(text="第一句"))).json()
    second = await (await fastgpt_client.post("/chat", json=body(text="第二句"))).json()
    chat = emulator.chat("a1002")
    assert [r["dataId"] for r in chat.records] == record_ids(emulator, first["turnId"]) + record_ids(
        emulator, second["turnId"]
    )
    resp = await fastgpt_client.post("/delete_last_turn", json=body())
    assert (await resp.json())["turnId"] == second["turnId"]
    assert [r["dataId"] for r in chat.records] == record_ids(emulator, first["turnId"])
    deletes = [r for r in emulator.requests if r.path.endswith(("/item/delete", "/record/delete"))]
    ids = {f"{second['turnId']}-q", f"{second['turnId']}-a"}
    assert {r.query["contentId"] for r in deletes} == ids and {r.body["contentId"] for r in deletes} == ids
    for r in deletes:
        assert r.query["appId"] == r.body["appId"] == "app1" and r.query["chatId"] == r.body["chatId"] == "a1002"
    # The path family is probed once, then remembered: at most one 404 per process.
    assert len(deletes) <= 3
    # Again: now the turn before it.
    assert (await (await fastgpt_client.post("/delete_last_turn", json=body())).json())["turnId"] == first["turnId"]
    assert chat.records == []


@every_build
async def test_delete_session_deletes_upstream_chat_and_local_session(fastgpt_client: Any, emulator: Any) -> None:
    await fastgpt_client.post("/set_info", json=body(key="k", value="v"))
    await fastgpt_client.post("/chat", json=body(text="你好"))
    assert emulator.chat("a1002") is not None
    resp = await fastgpt_client.delete("/delete_session", json=body())
    assert resp.status == 200 and (await resp.json())["code"] == "200"
    assert emulator.chat("a1002") is None
    resp = await fastgpt_client.post("/get_info", json=body())
    assert resp.status == 404 and (await resp.json())["type"] == "session_not_found"


@every_build
async def test_health_and_readiness(fastgpt_client: Any) -> None:
    assert await (await fastgpt_client.get("/healthz")).json() == {"status": "ok"}
    resp = await fastgpt_client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"


@every_build
async def test_readiness_fails_clearly_when_fastgpt_refuses_the_key(make_client: Any, fastgpt_settings: Any) -> None:
    client = await make_client(fastgpt_settings.with_(fastgpt_api_key=type(fastgpt_settings.fastgpt_api_key)("bad")))
    resp = await client.get("/readyz")
    assert resp.status == 502
    assert (await resp.json())["type"] == "upstream_auth"


@every_build
async def test_upstream_quirks_are_handled(fastgpt_client: Any, emulator: Any) -> None:
    """Reasoning is never spoken, fastAnswer is, unknown events and heartbeats are ignored."""
    for mode in ("reasoning", "fast_answer", "unknown_events", "malformed"):
        emulator.set_fault(mode, count=1)
        data = await (await fastgpt_client.post("/chat", json=body(f"s-{mode}", text="喂"))).json()
        assert data["nextStageCode"] == "1002", mode
        assert data["text"] == "您好，请问有人受伤吗？", mode


@every_build
async def test_transcript_survives_a_restart(make_client: Any, fastgpt_settings: Any) -> None:
    client = await make_client(fastgpt_settings)
    await client.post("/set_info", json=body(key="sgdd", value="南京西路"))
    data = await (await client.post("/chat", json=body(text="发生了交通事故"))).json()
    await client.close()
    again = await make_client(fastgpt_settings)
    info = (await (await again.post("/get_info", json=body())).json())["info"]
    assert info == {"sgdd": "南京西路"}
    from callagent.store import SQLiteStore, sqlite_path

    store = SQLiteStore(sqlite_path(fastgpt_settings.store))
    await store.open()
    try:
        (turn,) = await store.turns("a1002")
    finally:
        await store.close()
    assert turn.turn_id == data["turnId"] and turn.caller_text == "发生了交通事故"
    assert turn.reply_text == "您好，请问有人受伤吗？" and turn.stage_codes == ["1002"] and turn.status == "completed"
    assert turn.timings["first_text_ms"] is not None and turn.timings["total_ms"] > 0
    assert orjson.loads(turn.to_json())["turn_id"] == data["turnId"]


@every_build
async def test_user_select_question_is_spoken_and_the_answer_mapped(fastgpt_client: Any, emulator: Any) -> None:
    emulator.set_fault("interactive", count=1)
    asked = await (await fastgpt_client.post("/chat", json=body(text="喂"))).json()
    assert asked["text"].endswith("请问是单车事故还是多车事故？可选：单车事故、多车事故。")
    answered = await (await fastgpt_client.post("/chat", json=body(text="就是单车"))).json()
    assert answered["status"] == "completed"
    sent = completions(emulator)[-1].body
    assert sent["messages"][0]["content"] == "单车事故"
    assert not [k for k in sent["variables"] if k.startswith("_")]
    await fastgpt_client.post("/chat", json=body(text="好的"))
    assert completions(emulator)[-1].body["messages"][0]["content"] == "好的", "the question was answered"
    rows = await fastgpt_client.app[STORE].turns("a1002")
    assert [len(row.upstream_records) for row in rows] == [2, 0, 2], "the answer turn created no record upstream"


@every_build
async def test_interrupted_records_can_be_deleted_upstream(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>" + "请稍等，正在为您查询。" * 10])
    emulator.chunk_delay = 0.05
    emulator.finish_delay = 0.3  # a slow node finishes before the interrupted run is saved
    client = await make_client(fastgpt_settings.with_(interrupt_records="delete"))
    resp = await client.post("/chat?stream=true", json=body(text="喂"))
    assert b"text_delta" in await resp.content.readuntil(b"\n\n") + await resp.content.readuntil(b"\n\n")
    await client.post("/cancel", json=body())
    done = parse_sse(await resp.read())[-1]
    assert done[1]["status"] == "cancelled"
    turn_id = done[1]["turnId"]
    # FastGPT saved the partial turn when its workflow returned, after the disconnect; the
    # client waited for it (stopping the run where it can) and deleted both records.
    async with asyncio.timeout(2):
        while emulator.generating("a1002"):
            await asyncio.sleep(0.01)  # polling the emulator for the run's save, with a deadline
    assert emulator.chat("a1002") is not None
    assert not [r for r in emulator.chat("a1002").records if r["dataId"].startswith(turn_id)]
    deletes = [r for r in emulator.requests if r.path.endswith(("/item/delete", "/record/delete"))]
    assert {r.query["contentId"] for r in deletes} == {f"{turn_id}-a", f"{turn_id}-q"}


@pytest.mark.parametrize("emulator_app", ["4.14.11", "4.15"], indirect=True)
async def test_newer_fastgpt_path_family(make_client: Any, fastgpt_settings: Any, emulator: Any) -> None:
    client = await make_client(fastgpt_settings.with_(fastgpt_paths="v2"))
    await client.post("/chat", json=body(text="喂"))
    await client.post("/delete_last_turn", json=body())
    await client.delete("/delete_session", json=body())
    paths = [r.path for r in emulator.requests if r.method == "DELETE"]
    assert paths == ["/api/core/chat/record/delete"] * 2 + ["/api/core/chat/history/delHistory"]
    assert emulator.chat("a1002") is None


@every_build
async def test_the_upstream_connection_is_reused_across_turns(fastgpt_client: Any, emulator: Any) -> None:
    """The turn reads FastGPT's end-of-stream bookkeeping after speech ends, so the pooled
    connection goes back to the pool instead of being closed."""
    emulator.save_delay = 0.05  # FastGPT saves the chat between workflowDuration and [DONE]
    for transport in ("?stream=true", "", "?stream=true"):
        resp = await fastgpt_client.post(f"/chat{transport}", json=body(text="喂"))
        await resp.read()
        async with asyncio.timeout(2):
            while not emulator.streams[-1].closed.is_set():
                await asyncio.sleep(0.01)
        assert emulator.streams[-1].outcome == "completed"
    peers = {r.peer for r in completions(emulator)}
    assert len(completions(emulator)) == 3 and len(peers) == 1
