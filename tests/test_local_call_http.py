"""A whole call with the embedded agent over the real API, and undoing a turn's effects."""

from __future__ import annotations

from typing import Any

from .conftest import body

TO_PHONE_STEP = ["喂", "方便", "没有", "单车", "沪A8939", "对"]


async def say(client: Any, text: str, sid: str = "undo") -> dict[str, Any]:
    resp = await client.post("/chat", json=body(sid, text=text))
    assert resp.status == 200
    return await resp.json()


async def test_delete_last_turn_undoes_what_the_agent_collected(client: Any) -> None:
    for text in TO_PHONE_STEP:
        await say(client, text)
    await say(client, "138")
    await say(client, "1234")
    # The gateway heard more of the caller and re-sends a longer utterance for the last turn.
    deleted = await (await client.post("/delete_last_turn", json=body("undo"))).json()
    assert deleted["turnId"]
    # Without the undo the digits would pile up as 138 1234 12345678.
    assert "幺三八，幺二三四，五六七八，对吗" in (await say(client, "12345678"))["text"]
    await say(client, "对")
    info = (await (await client.post("/get_info", json=body("undo"))).json())["info"]
    assert info["sjhm"] == "13812345678"


async def test_delete_last_turn_removes_variables_the_turn_created(client: Any) -> None:
    for text in TO_PHONE_STEP[:4]:
        await say(client, text, "fresh")
    before = (await (await client.post("/get_info", json=body("fresh"))).json())["info"]
    await say(client, "13812345678", "fresh")
    during = (await (await client.post("/get_info", json=body("fresh"))).json())["info"]
    assert set(during) - set(before), "the turn created variables"
    await client.post("/delete_last_turn", json=body("fresh"))
    after = (await (await client.post("/get_info", json=body("fresh"))).json())["info"]
    assert after == before


async def test_sse_call_streams_in_several_chunks(client: Any) -> None:
    resp = await client.post("/chat?stream=true", json=body("sse-call", text="发生了交通事故"))
    raw = (await resp.read()).decode()
    assert raw.count("event: text_delta") > 1
    assert raw.startswith('event: stage_code\ndata: {"nextStageCode":"1002"')
