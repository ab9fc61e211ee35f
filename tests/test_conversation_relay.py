"""``/conversation-relay`` driven by a fake Twilio over a real socket: whole calls, barge-in,
hang-up and transfer, bad frames, signatures on the upgrade."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import MultiDict
from structlog.testing import capture_logs

from callagent.settings import Settings
from callagent.store import SQLiteStore, sqlite_path
from scripts.emulators import fastgpt as fe

from .twilio_side import AUTH_TOKEN, CALL_SID, RelayCall, sign, twiml

REPLY_END = {"type": "text", "token": "", "last": True}
# A transfer stage first, then a long reply: cut off, it must never end the call.
LONG_TRANSFER = "<state>0001</state>" + "您好，这里是交通事故快处中心，请问现场有人受伤吗？" * 4


def local_settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(upstream="local", store=f"sqlite:///{tmp_path}/callagent.db", **changes)


async def transcript(settings: Settings, session_id: str) -> list[Any]:
    store = SQLiteStore(sqlite_path(settings.store))
    await store.open()
    try:
        return await store.turns(session_id)
    finally:
        await store.close()


async def connect(client: Any, path: str = "/conversation-relay", **kwargs: Any) -> RelayCall:
    return RelayCall(await client.ws_connect(path, **kwargs))


async def test_a_call_to_its_transfer_then_the_handoff_dials(make_client: Any, tmp_path: Path) -> None:
    settings = local_settings(tmp_path, twilio_transfer_to="+8602112345678")
    client = await make_client(settings)
    call = await connect(client)
    await call.setup(callerRef="r-17", sessionId=CALL_SID)
    await call.prompt("喂")
    first = await call.reply()
    assert "方便通话吗" in call.spoken(first)
    assert all(f == {"type": "text", "token": f["token"], "last": False} for f in first[:-1]) and first[-1] == REPLY_END
    assert "<state>" not in call.spoken(first)
    await call.prompt("我要转人工")
    reply = await call.reply()
    assert "转接人工" in call.spoken(reply)
    end = await call.receive()
    assert end["type"] == "end"
    handoff = orjson.loads(end["handoffData"])
    assert handoff["reason"] == "transfer" and handoff["nextStageCode"] == "0001"
    assert handoff["nextStage"] == "转接人工" and handoff["sessionId"] == CALL_SID
    # Twilio ends the session and posts the <Connect action> URL with the handoff data.
    response = await client.post(
        "/twilio/handoff",
        data={"CallSid": CALL_SID, "SessionStatus": "ended", "HandoffData": end["handoffData"]},
    )
    assert response.status == 200 and response.content_type == "text/xml"
    (dial,) = twiml(await response.text())
    assert dial.tag == "Dial" and [(n.tag, n.text) for n in dial] == [("Number", "+8602112345678")]
    # The session is the call: every other API finds it by the CallSid.
    info = await client.post("/get_info", json={"sessionId": CALL_SID})
    assert (await info.json())["info"]["callerRef"] == "r-17"
    records = await transcript(settings, CALL_SID)
    assert [r.transport for r in records] == ["twilio", "twilio"]
    assert [r.status for r in records] == ["completed", "completed"]
    metrics = await (await client.get("/metrics")).text()
    assert 'callagent_turns_total{status="completed",transport="twilio"} 2.0' in metrics
    assert "callagent_open_websockets 1.0" in metrics
    await call.ws.close()


async def test_a_hang_up_stage_ends_the_call_after_its_last_token(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(local_settings(tmp_path, twilio_lang="zh-CN"))
    call = await connect(client)
    await call.setup()
    await call.prompt("喂")
    frames = [await call.receive()]
    while not frames[-1]["last"]:
        frames.append(await call.receive())
    assert all(f["lang"] == "zh-CN" for f in frames)
    await call.prompt("我在开车")
    frames = [await call.receive()]
    while frames[-1]["type"] != "end":
        frames.append(await call.receive())
    assert frames[-2] == {"type": "text", "token": "", "last": True, "lang": "zh-CN"}
    assert "再见" in call.spoken(frames)
    handoff = orjson.loads(frames[-1]["handoffData"])
    assert (handoff["reason"], handoff["nextStageCode"], handoff["nextStage"]) == ("hangup", "1001", "未准备好通话")
    # After `end` the session is over: a late prompt is not answered.
    await call.prompt("等一下")
    await call.ws.close()
    msg = await asyncio.wait_for(call.ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


async def test_an_interrupt_stops_the_reply_records_what_was_heard_and_never_ends_the_call(
    fastgpt_client: Any, emulator: Any, fastgpt_settings: Settings
) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_TRANSFER, "<state>1002</state>好的，请讲。"])
    emulator.chunk_delay = 0.05
    call = await connect(fastgpt_client)
    await call.setup()
    await call.prompt("喂")
    assert (await call.receive())["last"] is False
    interrupted_at = asyncio.get_running_loop().time()
    await call.interrupt("您好，这里", duration="1820")
    frames = await call.reply()
    assert all(f["type"] == "text" for f in frames), "a cut-off reply sends no `end`"
    (stream,) = emulator.streams
    await asyncio.wait_for(stream.closed.wait(), 1)
    assert stream.disconnected_at is not None and stream.disconnected_at - interrupted_at < 0.1
    # Nothing of the old reply follows: the next frames are the next reply's.
    await call.prompt("等一下")
    assert call.spoken(await call.reply()) == "好的，请讲。"
    first, second = await transcript(fastgpt_settings, CALL_SID)
    assert (first.status, first.spoken_text, first.stage_codes) == ("cancelled", "您好，这里", ["0001"])
    spoken_reply = LONG_TRANSFER.removeprefix("<state>0001</state>")
    assert first.reply_text and spoken_reply.startswith(first.reply_text) and first.reply_text != spoken_reply
    assert second.status == "completed"


async def test_an_interrupt_of_the_greeting_or_after_the_reply_notes_what_was_heard(
    fastgpt_client: Any, emulator: Any, fastgpt_settings: Settings
) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>您好，请问有人受伤吗？"])
    call = await connect(fastgpt_client)
    await call.setup()
    await call.interrupt("欢迎致电", duration=200)  # over the platform's welcome greeting: acknowledged
    assert await call.receive() == REPLY_END
    await call.prompt("喂")
    await call.reply()
    await call.interrupt("您好", duration=300)
    assert await call.receive() == REPLY_END
    (record,) = await transcript(fastgpt_settings, CALL_SID)
    assert (record.status, record.spoken_text) == ("completed", "您好")


async def test_partial_prompts_wait_for_the_last_one_unless_enabled(make_client: Any, tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    call = await connect(await make_client(settings))
    await call.setup()
    await call.prompt("喂，我", last=False)
    await call.prompt("喂，我这里出了事故", last=True)
    await call.reply()
    records = await transcript(settings, CALL_SID)
    assert [r.caller_text for r in records] == ["喂，我这里出了事故"]

    eager = local_settings(tmp_path / "eager", twilio_partial_prompts=True)
    (tmp_path / "eager").mkdir()
    call = await connect(await make_client(eager))
    await call.setup()
    await call.prompt("喂", last=False)
    assert "方便通话吗" in call.spoken(await call.reply())
    await call.prompt("喂", last=True)  # the same words, final: already answered
    await call.prompt("方便", last=True)
    assert "有人受伤吗" in call.spoken(await call.reply())
    assert [r.caller_text for r in await transcript(eager, CALL_SID)] == ["喂", "方便"]


async def test_an_upstream_failure_speaks_the_fallback_then_transfers(fastgpt_client: Any, emulator: Any) -> None:
    emulator.set_fault("http500")
    call = await connect(fastgpt_client)
    await call.setup()
    with capture_logs() as logs:
        await call.prompt("喂")
        frames = await call.reply()
        end = await call.receive()
    assert call.spoken(frames) == Settings().fallback_text
    assert orjson.loads(end["handoffData"])["reason"] == "transfer"
    assert any(e["event"] == "relay_turn_failed" for e in logs)


async def test_bad_frames_are_skipped_and_the_call_goes_on(make_client: Any, tmp_path: Path) -> None:
    call = await connect(await make_client(local_settings(tmp_path)))
    bad = [
        "{not json",
        "[1, 2]",
        '{"type": "prompt", "voicePrompt": "喂", "last": true}',  # before setup
        '{"type": "hello"}',
        '{"type": 7}',
        '{"type": "setup", "callSid": "not a call sid!"}',
        '{"type": "setup", "callSid": "CA1", "customParameters": [1]}',
    ]
    with capture_logs() as logs:
        for frame in bad:
            await call.send(frame)
        await call.ws.send_bytes(b"\x00\x01")
        await call.setup()
        for frame in [
            {"type": "prompt", "voicePrompt": 12},
            {"type": "prompt", "voicePrompt": "喂", "last": "yes"},
            {"type": "interrupt", "utteranceUntilInterrupt": 5},
            {"type": "dtmf", "digit": "1"},
            {"type": "info", "name": "roundTripDelayMs", "value": "12"},
            {"type": "error", "description": "Invalid message received"},
            {"type": "setup", "callSid": "CA2"},
        ]:
            await call.send(frame)
        await call.prompt("喂")
        # The first frame after all that is the reply: nothing answered the bad frames.
        assert "方便通话吗" in call.spoken(await call.reply())
    skipped = [e for e in logs if e["event"] == "relay_frame_skipped"]
    assert len(skipped) == len(bad) + 1 + 4
    assert any(e["event"] == "relay_platform_error" for e in logs)


async def test_a_closed_socket_cancels_its_turn_and_closes_the_upstream(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_TRANSFER])
    emulator.chunk_delay = 0.05
    call = await connect(fastgpt_client)
    await call.setup()
    await call.prompt("喂")
    await call.receive()
    await call.ws.close()
    (stream,) = emulator.streams
    await asyncio.wait_for(stream.closed.wait(), 2)
    assert stream.outcome == "disconnected"


# -- the signed upgrade ---------------------------------------------------------------------


@pytest.fixture
async def signed_client(make_client: Any, tmp_path: Path) -> Any:
    return await make_client(local_settings(tmp_path, twilio_auth_token=AUTH_TOKEN))


async def test_a_signed_upgrade_is_accepted(signed_client: Any) -> None:
    url = str(signed_client.make_url("/conversation-relay")).replace("http://", "ws://")
    call = await connect(signed_client, headers={"X-Twilio-Signature": sign(url)})
    await call.setup()
    await call.prompt("喂")
    assert "方便通话吗" in call.spoken(await call.reply())
    # Behind a TLS proxy Twilio signed the wss:// URL; query parameters are signed as parameters.
    host = signed_client.make_url("/").host + f":{signed_client.port}"
    signature = sign(f"wss://{host}/conversation-relay", {"line": "7"})
    ws = await signed_client.ws_connect(
        "/conversation-relay?line=7", headers={"X-Twilio-Signature": signature, "X-Forwarded-Proto": "https"}
    )
    await ws.close()
    # Every value of a repeated parameter is signed.
    signature = sign(f"ws://{host}/conversation-relay", MultiDict([("line", "7"), ("line", "8")]))
    ws = await signed_client.ws_connect("/conversation-relay?line=7&line=8", headers={"X-Twilio-Signature": signature})
    await ws.close()


@pytest.mark.parametrize("signature", [None, "bad", "wrong-url"])
async def test_an_unsigned_or_badly_signed_upgrade_is_refused(signed_client: Any, signature: str | None) -> None:
    headers = {}
    if signature == "bad":
        headers["X-Twilio-Signature"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    elif signature == "wrong-url":
        headers["X-Twilio-Signature"] = sign("wss://elsewhere.example.com/conversation-relay")
    with capture_logs() as logs, pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await signed_client.ws_connect("/conversation-relay", headers=headers)
    assert refused.value.status == 403
    (line,) = [e for e in logs if e["event"] == "twilio_signature_rejected"]
    assert AUTH_TOKEN not in repr(logs)
    assert line["reason"] == ("missing" if signature is None else "mismatch")


async def test_the_public_url_is_what_gets_signed(make_client: Any, tmp_path: Path) -> None:
    settings = local_settings(tmp_path, twilio_auth_token=AUTH_TOKEN, public_url="https://agent.example.com/cr")
    client = await make_client(settings)
    signature = sign("wss://agent.example.com/cr/conversation-relay")
    ws = await client.ws_connect("/conversation-relay", headers={"X-Twilio-Signature": signature})
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        url = str(client.make_url("/conversation-relay")).replace("http://", "ws://")
        await client.ws_connect("/conversation-relay", headers={"X-Twilio-Signature": sign(url)})


async def test_clauses_and_shutdown_after_the_running_reply(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(local_settings(tmp_path, twilio_segment="clause", local_chunk_delay=0.01))
    call = await connect(client)
    await call.setup()
    await call.prompt("喂")
    first = await call.receive()
    closing = asyncio.create_task(client.server.close())
    frames = [first]
    while True:
        msg = await asyncio.wait_for(call.ws.receive(), 10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frames.append(orjson.loads(msg.data))
    await closing
    # The running reply is finished before the socket closes with 1001 (going away).
    assert frames[-1] == REPLY_END and (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    tokens = [f["token"] for f in frames[:-1]]
    assert len(tokens) >= 2 and all(t[-1] in "，。？！、；：" for t in tokens), tokens


async def test_a_telnyx_call_speaks_the_same_frames(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(local_settings(tmp_path))
    call = await connect(client)
    telnyx_call = "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
    await call.send(
        {
            "type": "setup",
            "sessionId": "7a7e6a4f-1d44-4f0c-b5d4-9f9bf3a5c1f2",
            "callSid": telnyx_call,
            "callControlId": telnyx_call,
            "from": "+13122010094",
            "to": "+13122123456",
            "direction": "inbound",
            "callStatus": "active",
            "customParameters": {"customer_id": "customer_123"},
        }
    )
    await call.send({"type": "prompt", "voicePrompt": "喂", "lang": "zh", "last": True})
    assert "方便通话吗" in call.spoken(await call.reply())
    info = await client.get("/get_info", params={"sessionId": telnyx_call, "key": "customer_id"})
    assert (await info.json())["value"] == "customer_123"
