"""segment=clause: text_delta events carry whole clauses, on SSE and WebSocket."""

from __future__ import annotations

from typing import Any

from callagent.markup import clean_markup
from scripts.emulators import fastgpt as fe

from .conftest import body, parse_sse

REPLY = "<state>1002</state>好的，**车牌**沪A8939，对吗？请再说一下您的手机号，比如13812345678。事故发生在10:30吗？😀"
SPOKEN = clean_markup(REPLY.removeprefix("<state>1002</state>"))


async def test_sse_clauses(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([REPLY])
    emulator.chunk_chars = 2
    resp = await fastgpt_client.post("/chat?stream=true&segment=clause", json=body(text="喂"))
    frames = parse_sse(await resp.read())
    clauses = [d["text"] for n, d in frames if n == "text_delta"]
    assert clauses == ["好的，车牌沪A8939，", "对吗？请再说一下您的手机号，比如13812345678。", "事故发生在10:30吗？"]
    assert "".join(clauses) == SPOKEN
    assert frames[0][1]["nextStageCode"] == "1002" and frames[-1][1]["status"] == "completed"


async def test_json_reply_is_not_segmented_but_cleaned_the_same(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的，请问有人受伤吗？"])
    resp = await fastgpt_client.post("/chat?segment=clause", json=body(text="喂"))
    assert (await resp.json())["text"] == "好的，请问有人受伤吗？"


async def test_a_stalled_clause_is_flushed_after_the_delay(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>请您稍等一下我查一查"])
    emulator.set_fault("stall")
    emulator.fault_after_chunks = 7  # the tag, then "请您稍等一下我查一", then silence
    client = await make_client(fastgpt_settings.with_(idle_timeout=1.5))
    resp = await client.post("/chat?stream=true&segment=clause", json=body(text="喂"))
    frames = parse_sse(await resp.read())
    texts = [d["text"] for n, d in frames if n == "text_delta"]
    # No boundary came: the clause went out at the flush delay, long before the idle deadline.
    assert texts[0] == "请您稍等一下我查一"
    assert frames[-1][1]["type"] == "upstream_timeout"


async def test_websocket_start_sets_segmentation_per_session(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([REPLY])
    emulator.chunk_chars = 3
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "seg", "segment": "clause"})
    await ws.receive_json()
    await ws.send_json({"type": "chat", "text": "喂"})
    texts = []
    while True:
        msg = await ws.receive_json()
        if msg["type"] == "text_delta":
            texts.append(msg["text"])
        if msg["type"] == "done":
            break
    assert texts == ["好的，车牌沪A8939，", "对吗？请再说一下您的手机号，比如13812345678。", "事故发生在10:30吗？"]
    await ws.send_json({"type": "chat", "sessionId": "plain", "text": "喂"})
    plain = []
    while (msg := await ws.receive_json())["type"] != "done":
        if msg["type"] == "text_delta":
            plain.append(msg["text"])
    assert len(plain) > 3, "another session on the socket is not segmented"
