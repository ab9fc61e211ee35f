"""The FastGPT emulator speaks FastGPT's OpenAPI over real HTTP, faults included."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from callagent.sse import SSEParser
from scripts.emulators import fastgpt as fe

ROOT = Path(__file__).resolve().parent.parent

KEY = {"Authorization": "Bearer fastgpt-test"}
COMPLETIONS = "/api/v1/chat/completions"
REPLY = fe.DEFAULT_REPLY
SSE_TYPE = "text/event-stream;charset=utf-8"


# -- helpers ----------------------------------------------------------------------------------


def turn_body(
    text: str = "发生了交通事故",
    *,
    chat_id: str = "c1",
    turn: str = "t1",
    stream: bool = True,
    detail: bool = True,
    variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "chatId": chat_id,
        "stream": stream,
        "detail": detail,
        "responseChatItemId": f"{turn}-a",
        "variables": variables or {},
        "messages": [{"role": "user", "content": text, "dataId": f"{turn}-q"}],
    }


def parse_frames(raw: bytes) -> list[tuple[str | None, str]]:
    """Strict framing: optional `event:` line, exactly one `data:` line, blank line (the exact
    byte layout FastGPT sends, which a tolerant reader would not check)."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    frames: list[tuple[str | None, str]] = []
    for block in raw.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        event = lines.pop(0)[len("event: ") :] if lines[0].startswith("event: ") else None
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        frames.append((event, lines[0][len("data: ") :]))
    return frames


def content_of(data: str) -> str | None:
    try:
        return json.loads(data)["choices"][0]["delta"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def spoken(raw: bytes) -> str:
    """What a tolerant client speaks: answer/fastAnswer contents of the events that parse."""
    parser = SSEParser()
    text: list[str] = []
    for event in [*parser.feed(raw), *parser.finish()]:
        content = content_of(event.data.decode(errors="replace"))
        if event.event in (None, b"answer", b"fastAnswer") and isinstance(content, str):
            text.append(content)
    return "".join(text)


def texts_of(value_items: list[dict[str, Any]]) -> str:
    """Text of FastGPT value items, identified by key (newest builds may omit `type`)."""
    return "".join(item["text"]["content"] for item in value_items if "text" in item)


@dataclass
class Harness:
    server: TestServer
    emu: fe.Emulator
    http: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def turn(self, body: dict[str, Any] | None = None, *, path: str = COMPLETIONS, headers: Any = KEY):
        """(status, headers, body bytes) of a whole completions call."""
        async with self.http.post(self.url(path), json=body or turn_body(), headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def api(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        headers: Any = KEY,
    ) -> tuple[int, Any]:
        async with self.http.request(method, self.url(path), params=params, json=json_body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def records(self, chat_id: str = "c1", *, offset: int = 0, page_size: int = 10) -> list[dict[str, Any]]:
        body = {"appId": "app1", "chatId": chat_id, "offset": offset, "pageSize": page_size}
        status, envelope = await self.api("POST", "/api/core/chat/getPaginationRecords", json_body=body)
        assert status == 200 and envelope["code"] == 200
        return envelope["data"]["list"]

    async def variables(self, chat_id: str = "c1") -> dict[str, Any]:
        status, envelope = await self.api("GET", "/api/core/chat/init", params={"appId": "app1", "chatId": chat_id})
        assert status == 200 and envelope["code"] == 200
        return envelope["data"]["variables"]


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
def start(aiohttp_server: Any, http: aiohttp.ClientSession) -> Start:
    async def start(**settings: Any) -> Harness:
        # One release with every path family's quirks: the release-specific tests name theirs.
        app = fe.create_emulator_app(**{"build": "4.14.5"} | settings)
        return Harness(await aiohttp_server(app), app[fe.EMULATOR], http)

    return start


async def read_until(resp: aiohttp.ClientResponse, needle: bytes, count: int = 1) -> bytes:
    got = b""
    async with asyncio.timeout(5):
        while got.count(needle) < count:
            block = await resp.content.readany()
            assert block, "stream ended early"
            got += block
    return got


async def closed(log: fe.StreamLog) -> None:
    await asyncio.wait_for(log.closed.wait(), 5)


# -- streams ----------------------------------------------------------------------------------


async def test_stream_detail_frames_and_order(start: Start) -> None:
    h = await start()
    status, headers, raw = await h.turn()
    assert status == 200
    assert headers["Content-Type"] == SSE_TYPE
    assert headers["Cache-Control"] == "no-cache, no-transform"
    assert headers["X-Accel-Buffering"] == "no"
    frames = parse_frames(raw)
    events = [e for e, _ in frames]
    assert events[0] == "flowNodeStatus"
    assert events[-4:] == ["workflowDuration", "answer", "answer", "flowResponses"]
    assert frames[-3][1] == (
        '{"id":"","object":"","created":0,"model":"",'
        '"choices":[{"delta":{"role":"assistant","content":null},"index":0,"finish_reason":"stop"}]}'
    )
    assert frames[-2][1] == "[DONE]"
    assert isinstance(json.loads(frames[-1][1]), list)
    assert json.loads(frames[-4][1])["durationSeconds"] >= 0
    # Exact answer chunk bytes; 4-character pieces cut the state tag apart.
    assert raw.split(b"\n\n")[1] == (
        b'event: answer\ndata: {"id":"","object":"","created":0,"model":"","choices":'
        b'[{"delta":{"role":"assistant","content":"<sta"},"index":0,"finish_reason":null}]}'
    )
    pieces = [content_of(d) for e, d in frames[1:-4]]
    assert all(e == "answer" for e, _ in frames[1:-4])
    assert "".join(p for p in pieces if p) == REPLY
    assert all(len(p or "") <= 4 for p in pieces)
    log = h.emu.streams[-1]
    assert log.outcome == "completed" and log.closed.is_set()
    assert log.started <= log.first_chunk_at <= log.finished_at


async def test_v2_stream_sends_node_responses_and_a_null_content_stop(start: Start) -> None:
    h = await start()
    _, _, raw = await h.turn(path="/api/v2/chat/completions")
    events = [e for e, _ in parse_frames(raw)]
    assert events[:2] == ["flowNodeResponse", "flowNodeStatus"]
    assert events[-5:] == ["answer", "flowNodeResponse", "workflowDuration", "answer", "answer"]
    assert "flowResponses" not in events
    stop = json.loads(parse_frames(raw)[-2][1])
    assert stop["choices"][0] == {"delta": {"role": "assistant", "content": None}, "index": 0, "finish_reason": "stop"}


async def test_stream_without_detail_has_only_unnamed_answer_frames(start: Start) -> None:
    h = await start()
    _, _, raw = await h.turn(turn_body(detail=False))
    frames = parse_frames(raw)
    assert all(event is None for event, _ in frames)
    assert frames[-1][1] == "[DONE]"
    assert json.loads(frames[-2][1])["choices"][0]["finish_reason"] == "stop"
    assert "".join(content_of(d) or "" for _, d in frames[:-1]) == REPLY


async def test_chunk_size_and_delays(start: Start) -> None:
    h = await start(chunk_chars=2, first_chunk_delay=0.05, chunk_delay=0.001)
    _, _, raw = await h.turn()
    pieces = [content_of(d) for e, d in parse_frames(raw) if e == "answer" and content_of(d)]
    assert pieces[0] == "<s" and "".join(pieces) == REPLY
    log = h.emu.streams[-1]
    assert log.first_chunk_at - log.started >= 0.05


class SlowBrain:
    """Says ``first``, then takes its time (a slow node) until released, then says ``then``."""

    def __init__(self, first: str = "<state>1002</state>请稍等", then: str = "好了。") -> None:
        self.first, self.then = first, then
        self.release = asyncio.Event()

    async def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str]:
        yield self.first
        await self.release.wait()
        yield self.then


async def test_heartbeats_while_the_brain_is_silent(start: Start) -> None:
    brain = SlowBrain("<state>1002</state>", "好的")
    h = await start(brain=brain, chunk_chars=50, heartbeat_interval=0.02)
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as resp:
        await read_until(resp, b'"content":""', 2)
        brain.release.set()
        await resp.read()
    assert h.emu.streams[-1].outcome == "completed"


async def test_update_variables_event_and_stored_variables(start: Start) -> None:
    seen: list[dict[str, Any]] = []

    def reply(chat_id: str, text: str, variables: dict[str, Any]) -> list[str | dict[str, Any]]:
        seen.append(variables)
        return ["<state>1002</state>好的", {"hphm1": "沪A8939"}, "记下了"]

    h = await start(brain=fe.ScriptedBrain(reply))
    _, _, raw = await h.turn(turn_body(variables={"caller": "a", "keep": 1}))
    updates = [json.loads(d) for e, d in parse_frames(raw) if e == "updateVariables"]
    assert updates == [{"caller": "a", "keep": 1, "hphm1": "沪A8939"}]
    assert spoken(raw) == "<state>1002</state>好的记下了"
    assert await h.variables() == {"caller": "a", "keep": 1, "hphm1": "沪A8939"}
    # Request variables win over stored ones, key by key.
    await h.turn(turn_body(turn="t2", variables={"caller": "b"}))
    assert seen[1] == {"caller": "b", "keep": 1, "hphm1": "沪A8939"}


async def test_scripted_replies_rotate_per_chat(start: Start) -> None:
    h = await start(brain=fe.ScriptedBrain(["一", "二"]))
    got = [spoken((await h.turn(turn_body(turn=f"t{i}")))[2]) for i in range(3)]
    assert got == ["一", "二", "一"]
    assert spoken((await h.turn(turn_body(chat_id="other")))[2]) == "一"


# -- non-stream -------------------------------------------------------------------------------


async def test_non_stream_json(start: Start) -> None:
    h = await start()
    status, _, raw = await h.turn(turn_body(stream=False, detail=False, variables={"x": 1}))
    body = json.loads(raw)
    assert status == 200
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "responseData" not in body
    _, _, raw = await h.turn(turn_body(turn="t2", stream=False, variables={"y": 2}))
    body = json.loads(raw)
    assert body["newVariables"] == {"x": 1, "y": 2}
    assert isinstance(body["responseData"], list)


async def test_non_stream_array_content(start: Start) -> None:
    h = await start(fault="array_content")
    _, _, raw = await h.turn(turn_body(stream=False))
    content = json.loads(raw)["choices"][0]["message"]["content"]
    assert isinstance(content, list) and len(content) > 1
    assert texts_of(content) == REPLY


# -- errors before output ---------------------------------------------------------------------


async def test_bad_key_stream_is_one_error_frame_with_http_200(start: Start) -> None:
    h = await start()
    status, headers, raw = await h.turn(headers={"Authorization": "Bearer wrong"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    [(event, data)] = parse_frames(raw)
    assert event == "error"
    assert json.loads(data)["code"] == 514
    assert h.emu.chats == {}


@pytest.mark.parametrize(("build", "status"), [("4.8.15", 200), ("4.14.5", 500), ("4.15", 500)])
async def test_bad_key_non_stream_envelope(start: Start, build: str, status: int) -> None:
    h = await start(build=build)
    got, _, raw = await h.turn(turn_body(stream=False), headers={})
    assert got == status and json.loads(raw)["code"] == 514


async def test_empty_messages_is_an_error(start: Start) -> None:
    h = await start()
    body = turn_body() | {"messages": []}
    status, _, raw = await h.turn(body)
    assert status == 200 and [e for e, _ in parse_frames(raw)] == ["error"]
    status, _, raw = await h.turn(body | {"stream": False})
    assert status == 500 and json.loads(raw)["code"] == 500


# -- records and histories --------------------------------------------------------------------


async def test_records_are_stored_with_given_ids_and_paged_from_the_newest(start: Start) -> None:
    h = await start()
    await h.turn(turn_body("第一句", turn="t1"))
    await h.turn(turn_body("第二句", turn="t2"))
    records = await h.records()
    assert [r["dataId"] for r in records] == ["t1-q", "t1-a", "t2-q", "t2-a"]
    assert [r["obj"] for r in records] == ["Human", "AI", "Human", "AI"]
    assert records[0]["value"] == [{"type": "text", "text": {"content": "第一句"}}]
    assert texts_of(records[1]["value"]) == REPLY
    assert all(set(r) == {"_id", "dataId", "obj", "value", "time"} for r in records)
    assert [r["dataId"] for r in await h.records(page_size=2)] == ["t2-q", "t2-a"]
    assert [r["dataId"] for r in await h.records(offset=2, page_size=2)] == ["t1-q", "t1-a"]
    _, envelope = await h.api(
        "GET", "/api/core/chat/getResData", params={"appId": "app1", "chatId": "c1", "dataId": "t2-a"}
    )
    assert envelope["data"][-1]["textOutput"] == REPLY


ITEM_DELETE = "/api/core/chat/item/delete"
RECORD_DELETE = "/api/core/chat/record/delete"


@pytest.mark.parametrize(
    ("build", "path", "query_only", "body_only"),
    [
        ("4.8.15", ITEM_DELETE, "deleted", "refused"),
        ("4.11", ITEM_DELETE, "deleted", "refused"),
        ("4.14.5", ITEM_DELETE, "refused", "deleted"),
        ("4.14.11", ITEM_DELETE, 404, 404),
        ("4.14.11", RECORD_DELETE, "deleted", "refused"),
        ("4.15", RECORD_DELETE, "deleted", "deleted"),
        ("4.11", RECORD_DELETE, 404, 404),
    ],
)
async def test_where_a_record_delete_reads_its_ids(
    start: Start, build: str, path: str, query_only: Any, body_only: Any
) -> None:
    h = await start(build=build)
    await h.turn(turn_body(turn="t1"))
    stored = await h.records()
    ref = {"appId": "app1", "chatId": "c1", "contentId": "t1-a"}
    for outcome, kwargs in ((query_only, {"params": ref}), (body_only, {"json_body": ref})):
        async with h.http.delete(h.url(path), headers=KEY, **{"json" if "json_body" in kwargs else "params": ref}) as r:
            status, raw = r.status, await r.read()
        if isinstance(outcome, int):
            assert status == outcome
            continue
        envelope = json.loads(raw)
        assert (envelope["code"] == 200) == (outcome == "deleted"), (status, envelope)
        if outcome == "refused":
            assert envelope["message"] == "contentId or chatId is empty"
        left = ([] if build == "4.15" else ["t1-q"]) if outcome == "deleted" else [r["dataId"] for r in stored]
        assert [r["dataId"] for r in await h.records()] == left
        await h.turn(turn_body(turn="t1"))  # the record back for the next call
        h.emu.chats[("app1", "c1")].records = h.emu.chats[("app1", "c1")].records[-2:]


async def test_a_delete_with_ids_in_query_and_body_works_on_every_release(start: Start) -> None:
    for build in fe.BUILDS:
        h = await start(build=build)
        await h.turn(turn_body(turn="t1"))
        await h.turn(turn_body(turn="t2"))
        path = RECORD_DELETE if fe.BUILDS[build].item_delete is None else ITEM_DELETE
        for content_id in ("t2-q", "t2-a", "missing"):
            ref = {"appId": "app1", "chatId": "c1", "contentId": content_id}
            status, envelope = await h.api("DELETE", path, params=ref, json_body=ref)
            assert (status, envelope["code"]) == (200, 200)
        assert [r["dataId"] for r in await h.records()] == (["t1-a"] * 2 if build == "4.15" else ["t1-q", "t1-a"])


@pytest.mark.parametrize("path", ["/api/core/chat/delHistory", "/api/core/chat/history/delHistory"])
async def test_del_history_forgets_the_chat(start: Start, path: str) -> None:
    h = await start()
    await h.turn(turn_body(variables={"a": 1}))
    await h.turn(turn_body(chat_id="c2"))
    assert await h.variables() == {"a": 1}
    status, envelope = await h.api("DELETE", path, params={"appId": "app1", "chatId": "c1"})
    assert (status, envelope["code"]) == (200, 200)
    assert await h.records() == [] and await h.variables() == {}
    assert len(await h.records("c2")) == 2
    _, envelope = await h.api("POST", "/api/core/chat/getHistories", json_body={"appId": "app1"})
    assert [c["chatId"] for c in envelope["data"]["list"]] == ["c2"]
    _, envelope = await h.api("DELETE", "/api/core/chat/clearHistories", params={"appId": "app1"})
    assert envelope["code"] == 200 and h.emu.chats == {}


async def test_init_of_a_missing_chat_has_empty_variables(start: Start) -> None:
    h = await start()
    assert await h.variables("never-seen") == {}
    assert h.emu.chats == {}


async def test_crud_needs_key_and_app_id(start: Start) -> None:
    h = await start(build="4.8.15")
    status, envelope = await h.api("GET", "/api/core/chat/init", params={"chatId": "c1"})
    assert (status, envelope["code"]) == (200, 403)
    status, envelope = await h.api("GET", "/api/core/chat/init", params={"appId": "app1"}, headers={})
    assert (status, envelope["code"]) == (200, 514)
    h2 = await start(build="4.14.5")
    status, envelope = await h2.api("GET", "/api/core/chat/init", params={"chatId": "c1"})
    assert (status, envelope["code"]) == (500, 403)
    h3 = await start(build="4.15")
    status, envelope = await h3.api("GET", "/api/core/chat/init", params={"chatId": "c1"})
    assert (status, envelope["code"]) == (403, 403)


# -- faults -----------------------------------------------------------------------------------


async def test_error_mid_stream(start: Start) -> None:
    h = await start(fault="error_mid")
    status, _, raw = await h.turn()
    frames = parse_frames(raw)
    assert status == 200
    assert [e for e, _ in frames][-1] == "error"
    assert "[DONE]" not in [d for _, d in frames]
    assert sum(1 for e, _ in frames if e == "answer") == h.emu.fault_after_chunks
    assert h.emu.streams[-1].outcome == "error"
    assert await h.records() == []


async def test_eof_without_done(start: Start) -> None:
    h = await start(fault="eof")
    _, _, raw = await h.turn()
    events = [e for e, _ in parse_frames(raw)]
    assert "error" not in events and "workflowDuration" not in events
    assert b"[DONE]" not in raw
    assert h.emu.streams[-1].outcome == "eof"


async def test_stall_then_disconnect_is_recorded(start: Start) -> None:
    h = await start(fault="stall")
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as resp:
        log = h.emu.streams[-1]
        await read_until(resp, b"event: answer", h.emu.fault_after_chunks)
        assert not log.closed.is_set()
        resp.close()
    await closed(log)
    assert log.outcome == "disconnected" and log.finished_at is None
    assert log.disconnected_at is not None and log.disconnected_at >= log.first_chunk_at
    # The partial turn stays stored, as FastGPT keeps it, once the workflow returned.
    async with asyncio.timeout(5):
        while not (records := await h.records()):
            await asyncio.sleep(0.01)  # polling the emulator's store, with a deadline
    assert [r["dataId"] for r in records] == ["t1-q", "t1-a"]
    assert REPLY.startswith(texts_of(records[1]["value"]))


async def test_no_first_token_sends_headers_only(start: Start) -> None:
    h = await start(fault="no_first_token")
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as resp:
        assert resp.headers["Content-Type"] == SSE_TYPE
        log = h.emu.streams[-1]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.readany(), 0.05)
        resp.close()
    await closed(log)
    assert log.first_chunk_at is None and log.disconnected_at is not None


async def test_heartbeats_only(start: Start) -> None:
    h = await start(fault="heartbeats_only", heartbeat_interval=0.01)
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as resp:
        raw = await read_until(resp, b"\n\n", 3)
        resp.close()
    await closed(h.emu.streams[-1])
    frames = parse_frames(raw[: raw.rindex(b"\n\n") + 2])
    assert all(e == "answer" and content_of(d) == "" for e, d in frames)
    assert h.emu.streams[-1].outcome == "disconnected"


async def test_abort_breaks_the_connection(start: Start) -> None:
    h = await start(fault="abort")
    with pytest.raises(aiohttp.ClientError):
        await h.turn()
    await closed(h.emu.streams[-1])
    assert h.emu.streams[-1].outcome == "aborted"


@pytest.mark.parametrize("fault", ["malformed", "unknown_events", "reasoning", "fast_answer"])
async def test_noisy_streams_still_carry_the_reply(start: Start, fault: str) -> None:
    h = await start(fault=fault)
    _, _, raw = await h.turn()
    assert spoken(raw) == REPLY
    assert b"event: answer\ndata: [DONE]\n\n" in raw
    assert h.emu.streams[-1].outcome == "completed"
    expected = {
        "malformed": b"not json at all",
        "unknown_events": b"event: toolCall",
        "reasoning": b'"reasoning_content":',
        "fast_answer": b"event: fastAnswer",
    }[fault]
    assert expected in raw


async def test_big_reply(start: Start) -> None:
    h = await start(fault="big", chunk_chars=64)
    _, _, raw = await h.turn()
    text = spoken(raw)
    assert text.startswith(REPLY) and len(text.encode()) > 1_000_000
    assert raw.endswith(b"event: flowResponses\ndata: " + raw.rsplit(b"data: ", 1)[1])


async def test_slow_headers(start: Start) -> None:
    h = await start(fault="slow_headers")
    h.emu.slow_headers_delay = 0.05
    await h.turn()
    log = h.emu.streams[-1]
    assert log.first_chunk_at - log.started >= 0.05


async def test_http500(start: Start) -> None:
    h = await start(fault="http500")
    status, _, raw = await h.turn()
    assert status == 500 and json.loads(raw)["code"] == 500


async def test_error_before_output(start: Start) -> None:
    h = await start(fault="error_before")
    status, _, raw = await h.turn()
    assert status == 200 and [e for e, _ in parse_frames(raw)] == ["error"]


@pytest.mark.parametrize(
    ("fault", "status", "check"),
    [
        ("http500", 500, lambda raw: json.loads(raw)["code"] == 500),
        ("error_before", 500, lambda raw: json.loads(raw)["code"] == 510),
        ("error_mid", 500, lambda raw: json.loads(raw)["code"] == 500),
        ("eof", 200, lambda raw: raw.startswith(b"{") and not raw.endswith(b"}")),
        ("malformed", 200, lambda raw: raw.startswith(b"<html>")),
        ("reasoning", 200, lambda raw: texts_of(json.loads(raw)["choices"][0]["message"]["content"]) == REPLY),
        (
            "interactive",
            200,
            lambda raw: json.loads(raw)["choices"][0]["message"]["content"][1]["type"] == "interactive",
        ),
        ("unknown_events", 200, lambda raw: json.loads(raw)["choices"][0]["message"]["content"] == REPLY),
        ("big", 200, lambda raw: len(json.loads(raw)["choices"][0]["message"]["content"].encode()) > 1_000_000),
    ],
)
async def test_non_stream_faults(start: Start, fault: str, status: int, check: Callable[[bytes], bool]) -> None:
    h = await start(fault=fault)
    got_status, _, raw = await h.turn(turn_body(stream=False))
    assert got_status == status and check(raw)


async def test_non_stream_abort(start: Start) -> None:
    h = await start(fault="abort")
    with pytest.raises(aiohttp.ClientError):
        await h.turn(turn_body(stream=False))
    await closed(h.emu.streams[-1])


async def test_a_failing_brain_is_a_mid_stream_error(start: Start) -> None:
    class BrokenBrain:
        async def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str]:
            yield "<state>1002</state>"
            raise RuntimeError("model crashed")

    h = await start(brain=BrokenBrain())
    _, _, raw = await h.turn()
    frames = parse_frames(raw)
    assert frames[-1] == ("error", '{"message":"model crashed"}')
    assert b"[DONE]" not in raw


async def test_fault_for_a_count_of_calls_then_back_to_normal(start: Start) -> None:
    h = await start()
    h.emu.set_fault("http500", count=1)
    assert (await h.turn())[0] == 500
    assert (await h.turn())[0] == 200
    with pytest.raises(ValueError):
        h.emu.set_fault("no_such_mode")


async def test_control_endpoints(start: Start) -> None:
    h = await start()
    async with h.http.post(h.url("/__emulator/fault"), json={"mode": "error_before", "count": 1}) as resp:
        assert resp.status == 200
    _, _, raw = await h.turn()
    assert [e for e, _ in parse_frames(raw)] == ["error"]
    _, _, raw = await h.turn(turn_body(turn="t2"))
    assert spoken(raw) == REPLY
    async with h.http.get(h.url("/__emulator/requests")) as resp:
        requests = await resp.json()
    assert [r["path"] for r in requests] == [COMPLETIONS, COMPLETIONS]
    assert requests[1]["method"] == "POST"
    assert requests[1]["body"]["responseChatItemId"] == "t2-a"
    assert requests[1]["headers"]["Authorization"] == "Bearer fastgpt-test"
    assert h.emu.requests[0].body["messages"][0]["dataId"] == "t1-q"
    async with h.http.post(h.url("/__emulator/fault"), json={"mode": "bogus"}) as resp:
        assert resp.status == 400


async def test_v2_stop_ends_the_run_normally(start: Start) -> None:
    h = await start(brain=SlowBrain(then="不会说出"), chunk_chars=100)  # never released
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as resp:
        raw = await read_until(resp, b"event: answer")
        _, envelope = await h.api("POST", "/api/v2/chat/stop", json_body={"appId": "app1", "chatId": "c1"})
        assert envelope["code"] == 200
        raw += await resp.read()
    assert spoken(raw) == "<state>1002</state>请稍等"
    assert b"event: answer\ndata: [DONE]" in raw
    assert texts_of((await h.records())[1]["value"]) == "<state>1002</state>请稍等"


async def test_interactive_node_and_its_resume(start: Start) -> None:
    h = await start(brain=fe.ScriptedBrain(["<state>1002</state>好的。", "<state>2000</state>请拍照。"]))
    h.emu.set_fault("interactive", count=1)
    _, _, raw = await h.turn()
    events = [e for e, _ in parse_frames(raw)]
    assert events.index("interactive") < events.index("workflowDuration")
    await h.turn(turn_body("单车事故", turn="t2"))
    records = await h.records()
    # The resume turn added no Human/AI pair: the last AI record grew.
    assert [r["dataId"] for r in records] == ["t1-q", "t1-a"]
    assert [next(iter(set(v) - {"type"})) for v in records[1]["value"]] == ["text", "interactive", "text"]


# -- releases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "tail"),
    [
        ("4.8.15", ["answer", "answer", "flowResponses"]),
        ("4.11", ["workflowDuration", "answer", "answer", "flowResponses"]),
        ("4.14.11", ["workflowDuration", "answer", "flowResponses", "answer"]),
        ("4.15", ["workflowDuration", "answer", "flowResponses", "answer"]),
    ],
)
async def test_end_of_stream_per_release(start: Start, build: str, tail: list[str]) -> None:
    h = await start(build=build)
    frames = parse_frames((await h.turn())[2])
    events = [e for e, _ in frames]
    assert events[-len(tail) :] == tail and events.count("workflowDuration") == (build != "4.8.15")
    assert ("[DONE]" in dict(frames).values()) and (events[0] == "chatTitle") == (build == "4.15")
    stop = next(json.loads(d) for e, d in frames if e == "answer" and '"stop"' in d)
    assert stop["choices"][0]["delta"] == ({} if build == "4.8.15" else {"role": "assistant", "content": None})


async def test_paths_a_release_does_not_have_are_404(start: Start) -> None:
    h = await start(build="4.8.15")
    assert (await h.turn(path="/api/v2/chat/completions"))[0] == 404
    for method, path in [("POST", "/api/v2/chat/stop"), ("DELETE", "/api/core/chat/history/delHistory")]:
        async with h.http.request(method, h.url(path), headers=KEY) as resp:
            assert resp.status == 404 and resp.content_type == "text/html"
    async with h.http.post(h.url("/__emulator/build"), json={"build": "4.14.5"}) as resp:
        assert (await resp.json())["build"] == "4.14.5"
    _, envelope = await h.api("POST", "/api/v2/chat/stop", json_body={"appId": "app1", "chatId": "c1"})
    assert envelope["code"] == 200
    async with h.http.post(h.url("/__emulator/build"), json={"build": "9.9"}) as resp:
        assert resp.status == 400


@pytest.mark.parametrize("build", ["4.14.5", "4.14.11"])
async def test_a_second_run_while_the_chat_generates(start: Start, build: str) -> None:
    brain = SlowBrain()
    h = await start(build=build, brain=brain, chunk_chars=100)
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as first:
        await read_until(first, b"event: answer")
        second = asyncio.create_task(h.turn(turn_body(turn="t2")))
        if build == "4.14.11":
            status, _, raw = await second
        brain.release.set()
        await first.read()
        if build != "4.14.11":
            status, _, raw = await second
    frames = parse_frames(raw)
    if build == "4.14.11":
        assert status == 200 and [e for e, _ in frames] == ["error"] and json.loads(frames[0][1])["code"] == 504001
    else:
        assert spoken(raw).endswith("好了。")


@pytest.mark.parametrize(("build", "at_once"), [("4.14.5", False), ("4.15", True)])
async def test_a_run_whose_client_left_is_saved_when_its_workflow_returns(
    start: Start, build: str, at_once: bool
) -> None:
    h = await start(build=build, brain=SlowBrain(), chunk_chars=100)
    h.emu.finish_delay = 30  # a slow node: only the stop API ends it early
    async with h.http.post(h.url(COMPLETIONS), json=turn_body(), headers=KEY) as resp:
        await read_until(resp, b"event: answer")
        resp.close()
    await closed(h.emu.streams[-1])
    assert bool(await h.records()) == at_once and h.emu.generating("c1") != at_once
    if not at_once:
        _, envelope = await h.api("POST", "/api/v2/chat/stop", json_body={"appId": "app1", "chatId": "c1"})
        assert envelope["code"] == 200
        assert [r["dataId"] for r in await h.records()] == ["t1-q", "t1-a"] and not h.emu.generating("c1")


@pytest.mark.parametrize("build", ["4.8.15", "4.11"])
async def test_declared_variables_only_from_4_11(start: Start, build: str) -> None:
    seen: list[dict[str, Any]] = []

    def reply(chat_id: str, text: str, variables: dict[str, Any]) -> str:
        seen.append(variables)
        return "好的。"

    h = await start(build=build, brain=fe.ScriptedBrain(reply))
    h.emu.declared_variables = {"sjhm": "手机号", "cph": "车牌号"}
    await h.turn(turn_body(variables={"手机号": "13812345678", "cph": "沪A1", "other": 1}))
    if build == "4.11":
        assert seen == [{"sjhm": "13812345678", "cph": "沪A1"}] and await h.variables() == seen[0]
    else:
        assert seen == [{"手机号": "13812345678", "cph": "沪A1", "other": 1}]


async def test_an_unmatched_user_select_answer_ends_the_run_silently(start: Start) -> None:
    h = await start(brain=fe.ScriptedBrain(["<state>1002</state>好的。", "<state>2000</state>请拍照。"]))
    h.emu.set_fault("interactive_nested", count=1)
    frames = parse_frames((await h.turn())[2])
    node = json.loads(next(d for e, d in frames if e == "interactive"))["interactive"]
    assert node["type"] == "childrenInteractive"
    raw = (await h.turn(turn_body("不知道", turn="t2")))[2]
    assert spoken(raw) == "" and b"workflowDuration" in raw
    raw = (await h.turn(turn_body("单车事故", turn="t3")))[2]
    assert spoken(raw) == "<state>2000</state>请拍照。"
    # The question was used up by the unmatched answer: "单车事故" started a fresh run.
    assert [r["dataId"] for r in await h.records()] == ["t1-q", "t1-a", "t3-q", "t3-a"]


@pytest.mark.parametrize("build", ["4.11", "4.14.5"])
async def test_payment_pause_from_4_14_1(start: Start, build: str) -> None:
    h = await start(build=build, fault="payment_pause")
    frames = parse_frames((await h.turn())[2])
    if build == "4.14.5":
        node = json.loads(next(d for e, d in frames if e == "interactive"))["interactive"]
        assert node["type"] == "paymentPause" and frames[-1] == ("flowResponses", frames[-1][1])
    else:
        assert frames[-1][0] == "error" and json.loads(frames[-1][1])["statusText"] == "aiPointsNotEnough"


async def test_bad_bodies_and_rate_limits_are_json_from_4_14_11(start: Start) -> None:
    h = await start(build="4.14.11")
    status, headers, raw = await h.turn(turn_body() | {"variables": [1]})
    assert status == 400 and headers["Content-Type"].startswith("application/json") and json.loads(raw)["code"] == 400
    h.emu.set_fault("rate_limited", count=1)
    status, _, raw = await h.turn()
    assert status == 429 and json.loads(raw)["code"] == 429
    old = await start(build="4.14.5")
    assert (await old.turn(turn_body() | {"variables": [1]}))[0] == 200


async def test_local_brain(start: Start) -> None:
    h = await start(brain=fe.LocalBrain(), chunk_chars=8)
    _, _, raw = await h.turn(turn_body("你好"))
    assert "<state>" in spoken(raw)
    assert b"event: answer\ndata: [DONE]" in raw


# -- command line -----------------------------------------------------------------------------


async def test_cli_serves_and_detects_disconnects(http: aiohttp.ClientSession) -> None:
    port = unused_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--reply", "<state>0000</state>再见", "--fault", "stall", "--chunk-chars", "2"]
    args += ["--build", "4.14.5"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.emulators.fastgpt",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    async with http.get(f"{base}/__emulator/streams") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)  # polling the starting process, with a deadline
            async with http.post(f"{base}{COMPLETIONS}", json=turn_body(), headers=KEY) as resp:
                await read_until(resp, b"event: answer", 3)
                resp.close()
            while True:
                async with http.get(f"{base}/__emulator/streams") as resp:
                    [log] = await resp.json()
                if log["closed"]:
                    break
                await asyncio.sleep(0.01)  # polling another process, with a deadline
        assert log["outcome"] == "disconnected" and log["disconnected_at"] is not None
        async with http.get(f"{base}/__emulator/build") as resp:
            assert (await resp.json())["build"] == "4.14.5"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
