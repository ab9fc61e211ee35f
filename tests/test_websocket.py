"""The WebSocket transport: events, barge-in, multiplexing, bad frames, slow gateways, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from callagent.store import SQLiteStore, sqlite_path
from scripts.emulators import fastgpt as fe

LONG_REPLY = "<state>1002</state>" + "您好，这里是交通事故快处中心，请问现场有人受伤吗？" * 4


async def receive(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return msg.json()


async def until(ws: Any, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Messages up to and including the first one matching ``predicate``."""
    seen = []
    while True:
        seen.append(await receive(ws, timeout))
        if predicate(seen[-1]):
            return seen


def is_terminal(msg: dict[str, Any]) -> bool:
    return msg["type"] in ("done", "error") and "turnId" in msg


async def test_a_turn_streams_events_with_turn_id_and_seq(fastgpt_client: Any) -> None:
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "w1", "variables": {"hphm1": "沪A8939"}})
    assert (await receive(ws))["type"] == "ack"
    await ws.send_json({"type": "chat", "text": "发生了交通事故"})
    msgs = await until(ws, is_terminal)
    assert msgs[0]["type"] == "stage_code" and msgs[-1]["type"] == "done"
    assert msgs[0]["nextStageCode"] == "1002" and msgs[0]["nextStage"] == "通话中"
    assert "".join(m["text"] for m in msgs if m["type"] == "text_delta") == "您好，请问有人受伤吗？"
    assert msgs[-1]["status"] == "completed" and set(msgs[-1]["latency"]) >= {"first_text_ms", "total_ms"}
    assert len({m["turnId"] for m in msgs}) == 1
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > 1  # the ack had seq 1
    await ws.send_json({"type": "ping", "t": 42})
    assert (await receive(ws))["type"] == "pong"


async def test_session_operations_over_the_socket(fastgpt_client: Any, emulator: Any) -> None:
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "w2"})
    await receive(ws)
    await ws.send_json({"type": "set_info", "key": "sgdd", "value": "人民广场"})
    assert (await receive(ws))["for"] == "set_info"
    await ws.send_json({"type": "get_info", "key": "sgdd"})
    info = await receive(ws)
    assert (info["type"], info["key"], info["value"]) == ("info", "sgdd", "人民广场")
    await ws.send_json({"type": "chat", "text": "你好"})
    done = (await until(ws, is_terminal))[-1]
    await ws.send_json({"type": "delete_last_turn"})
    ack = await receive(ws)
    assert (ack["type"], ack["for"], ack["turnId"]) == ("ack", "delete_last_turn", done["turnId"])
    assert emulator.chat("w2").records == []
    await ws.send_json({"type": "get_info"})
    assert (await receive(ws))["info"] == {"sgdd": "人民广场"}


async def test_interrupt_stops_the_turn_and_closes_upstream_at_once(
    fastgpt_client: Any, emulator: Any, fastgpt_settings: Any
) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY])
    emulator.chunk_delay = 0.05
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "w3"})
    await receive(ws)
    await ws.send_json({"type": "chat", "text": "喂"})
    await until(ws, lambda m: m["type"] == "text_delta")
    loop = asyncio.get_running_loop()
    interrupted_at = loop.time()
    await ws.send_json({"type": "interrupt", "spokenText": "您好"})
    msgs = await until(ws, lambda m: m["type"] == "ack")
    assert msgs[-1]["for"] == "interrupt" and msgs[-1]["cancelled"] is True
    turn_id = msgs[-1]["turnId"]
    assert [m for m in msgs if m["type"] == "done"] == [
        {
            "type": "done",
            "turnId": turn_id,
            "seq": msgs[-2]["seq"],
            "status": "cancelled",
            "latency": msgs[-2]["latency"],
        }
    ]
    (stream,) = emulator.streams
    await asyncio.wait_for(stream.closed.wait(), 1)
    assert stream.disconnected_at is not None
    assert stream.disconnected_at - interrupted_at < 0.1
    # Nothing of the old turn after the ack.
    await ws.send_json({"type": "ping", "t": 1})
    assert (await receive(ws))["type"] == "pong"
    store = SQLiteStore(sqlite_path(fastgpt_settings.store))
    await store.open()
    try:
        (record,) = await store.turns("w3")
    finally:
        await store.close()
    assert (record.status, record.spoken_text) == ("cancelled", "您好")
    spoken_reply = LONG_REPLY.removeprefix("<state>1002</state>")
    assert record.reply_text and spoken_reply.startswith(record.reply_text)
    assert len(record.reply_text) < len(spoken_reply)


async def test_a_new_chat_barges_in_on_the_running_turn(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>0003</state>马上为您转接。"])
    emulator.chunk_delay = 0.05
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "w4"})
    await receive(ws)
    await ws.send_json({"type": "chat", "text": "喂", "turnId": "t-1"})
    await until(ws, lambda m: m["type"] == "text_delta")
    await ws.send_json({"type": "chat", "text": "有人受伤了", "turnId": "t-2"})
    msgs = await until(ws, lambda m: is_terminal(m) and m["turnId"] == "t-2")
    old_done = next(i for i, m in enumerate(msgs) if m["turnId"] == "t-1" and m["type"] == "done")
    assert msgs[old_done]["status"] == "cancelled"
    assert all(m["turnId"] == "t-2" for m in msgs[old_done + 1 :]), "no stale event of the old turn"
    new = [m for m in msgs if m["turnId"] == "t-2"]
    assert new[0]["nextStageCode"] == "0003" and new[-1]["status"] == "completed"


async def test_sessions_multiplexed_on_one_socket_are_independent(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(lambda chat, text, v: f"<state>1002</state>{chat}:{text}")
    ws = await fastgpt_client.ws_connect("/ws")
    for sid in ("m1", "m2", "m3"):
        await ws.send_json({"type": "chat", "sessionId": sid, "text": f"hello-{sid}"})
    texts: dict[str, str] = {}
    dones: dict[str, str] = {}
    turn_session: dict[str, str] = {}
    while len(dones) < 3:
        m = await receive(ws)
        if m["type"] == "text_delta":
            texts[m["turnId"]] = texts.get(m["turnId"], "") + m["text"]
        elif m["type"] == "done":
            dones[m["turnId"]] = m["status"]
    for turn_id, text in texts.items():
        sid = text.split(":")[0]
        turn_session[turn_id] = sid
        assert text == f"{sid}:hello-{sid}"
    assert sorted(turn_session.values()) == ["m1", "m2", "m3"]
    assert set(dones.values()) == {"completed"}


@pytest.mark.parametrize(
    ("frame", "error", "msg"),
    [
        ("not json", "malformed_json", "malformed JSON"),
        ("[1]", "malformed_json", "JSON object"),
        ('{"type": "dance"}', "invalid_request", "type: must be one of"),
        ('{"text": "no type"}', "invalid_request", "type: must be one of"),
        ('{"type": "chat", "text": "x"}', "invalid_request", "sessionId: field required"),
        ('{"type": "chat", "sessionId": "s1"}', "invalid_request", "text: field required"),
        ('{"type": "chat", "sessionId": "s 1", "text": "x"}', "invalid_request", "sessionId"),
        ('{"type": "get_info", "sessionId": "unknown"}', "session_not_found", "unknown session"),
        ('{"type": "start", "sessionId": "s1", "segment": "word"}', "invalid_request", "segment"),
        ('{"type": "chat", "sessionId": "s1", "text": "' + "x" * 70000 + '"}', "invalid_request", "frame larger"),
        # Fewer characters than the limit, more bytes: the limit is in bytes.
        ('{"type": "chat", "sessionId": "s1", "text": "' + "喂" * 30000 + '"}', "invalid_request", "frame larger"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(
    fastgpt_client: Any, frame: str, error: str, msg: str
) -> None:
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_str(frame)
    reply = await receive(ws)
    assert reply["type"] == "error" and reply["error"] == error and msg in reply["msg"]
    assert reply["code"] in ("400", "404", "422")
    await ws.send_bytes(b"\x00\x01")
    reply = await receive(ws)
    assert reply["type"] == "error" and "binary" in reply["msg"]
    await ws.send_json({"type": "ping", "t": "still-there"})
    assert (await receive(ws))["t"] == "still-there"


async def test_a_gateway_that_stops_reading_is_disconnected(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.set_fault("big")
    emulator.chunk_chars = 2
    client = await make_client(fastgpt_settings.with_(ws_send_queue=16, ws_send_timeout=0.5))
    ws = await client.ws_connect("/ws")
    with capture_logs() as logs:
        await ws.send_json({"type": "chat", "sessionId": "slow", "text": "喂"})
        # Never read: the server's outbox fills once the socket buffers are full.
        (stream,) = await _streams(emulator, 1)
        await asyncio.wait_for(stream.closed.wait(), 20)
    assert stream.outcome == "disconnected", "the turn of a dropped socket closes its upstream"
    assert any(e["event"] == "ws_slow_consumer" for e in logs)
    msg = await asyncio.wait_for(_drain_until_closed(ws), 20)
    assert msg in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)


async def _streams(emulator: Any, n: int) -> list[Any]:
    async with asyncio.timeout(5):
        while len(emulator.streams) < n:
            await asyncio.sleep(0.01)
    return emulator.streams


async def _drain_until_closed(ws: Any) -> Any:
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            return msg.type


async def test_shutdown_closes_sockets_with_1001_after_running_turns_end(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的，请稍等。"])
    emulator.chunk_delay = 0.02
    client = await make_client(fastgpt_settings)
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "chat", "sessionId": "bye", "text": "喂"})
    await until(ws, lambda m: m["type"] == "stage_code")
    closing = asyncio.create_task(client.server.close())
    msgs = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        msgs.append(msg.json())
    await closing
    assert msgs[-1]["type"] == "done" and msgs[-1]["status"] == "completed"
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
