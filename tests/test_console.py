"""The operator console's server side over real sockets: access, the call feed, step-in actions,
the transcript route, slow viewers, and the feed staying unhooked while nobody watches.

The browser itself is driven in ``test_console_browser.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from callagent.settings import Settings
from callagent.sse import read_events
from callagent.web.keys import ENGINE

from .conftest import MakeClient, body, parse_sse

CONSOLE_KEY = "console-secret"
GATEWAY_KEY = "gateway-secret"
SLOW = 0.15  # seconds between the local agent's reply pieces: a turn runs about a second


def settings(**changes: Any) -> Settings:
    return Settings(**({"upstream": "local", "store": "memory://"} | changes))


class Feed:
    """A console viewer: the SSE feed read message by message."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events = read_events(response)
        self.seen: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        event = await asyncio.wait_for(anext(self.events), 5)
        message: dict[str, Any] = orjson.loads(event.data)
        self.seen.append(message)
        return message

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            message = await self.next()
            if match(message):
                return message


async def open_feed(client: TestClient[Any, Any], key: str | None = CONSOLE_KEY) -> Feed:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await client.get("/console/api/feed", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    feed = Feed(response)
    assert (await feed.next())["type"] == "hello"
    return feed


@pytest.fixture
async def console(make_client: MakeClient) -> TestClient[Any, Any]:
    """callagent (slow local agent) with both gateway and console keys."""
    return await make_client(
        settings(api_keys=(GATEWAY_KEY,), console_keys=(f"alice:{CONSOLE_KEY}",), local_chunk_delay=SLOW)
    )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def feed(console: TestClient[Any, Any]) -> AsyncIterator[Feed]:
    viewer = await open_feed(console)
    yield viewer
    viewer.response.close()


# -- access ---------------------------------------------------------------------------------


async def test_console_is_absent_without_keys_off_loopback(make_client: MakeClient) -> None:
    client = await make_client(settings(host="0.0.0.0"))
    for path in ("/console", "/console/static/console.js", "/console/api/feed", "/console/api/overview"):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["type"] == "not_found"


async def test_console_on_loopback_needs_no_key(make_client: MakeClient) -> None:
    client = await make_client(settings())
    page = await client.get("/console")
    assert page.status == 200 and "callagent console" in await page.text()
    overview = await client.get("/console/api/overview")
    assert overview.status == 200 and "turns" in await overview.json()


async def test_console_keys_and_gateway_keys_open_different_doors(console: TestClient[Any, Any]) -> None:
    assert (await console.get("/console")).status == 200  # the page holds no call data
    assert (await console.get("/console/static/console.js")).status == 200
    for headers in ({}, auth(GATEWAY_KEY), auth("wrong")):
        response = await console.get("/console/api/overview", headers=headers)
        assert response.status == 401
        assert (await response.json())["type"] == "unauthorized"
    assert (await console.get("/console/api/overview", headers=auth(CONSOLE_KEY))).status == 200
    assert (await console.get(f"/console/api/overview?token={CONSOLE_KEY}")).status == 200
    # A console key is no gateway key.
    assert (await console.post("/chat", json=body(text="喂"), headers=auth(CONSOLE_KEY))).status == 401
    assert (await console.get("/transcript?sessionId=a1002", headers=auth(CONSOLE_KEY))).status == 401


# -- the feed -------------------------------------------------------------------------------


async def test_feed_streams_a_turn_as_it_happens(console: TestClient[Any, Any], feed: Feed) -> None:
    reply = await console.post("/chat", json=body("feed-1", text="喂"), headers=auth(GATEWAY_KEY))
    text = (await reply.json())["text"]
    started = await feed.until(lambda m: m["type"] == "turn")
    assert started["session"] == "feed-1" and started["text"] == "喂" and started["transport"] == "http"
    end = await feed.until(lambda m: m["type"] == "end")
    assert end["status"] == "completed" and end["latency"]["first_text_ms"] is not None
    deltas = "".join(m["text"] for m in feed.seen if m["type"] == "delta")
    assert deltas == text and len([m for m in feed.seen if m["type"] == "delta"]) > 1
    assert [m["code"] for m in feed.seen if m["type"] == "stage"] == ["1002"]
    summary = await feed.until(lambda m: m["type"] == "call")
    assert summary["session"] == "feed-1" and summary["state"] == "waiting" and summary["turns"] == 1
    assert summary["stage"] == "1002" and summary["utterance"] == "喂"


async def test_feed_shows_a_barge_in_with_what_was_heard(console: TestClient[Any, Any], feed: Feed) -> None:
    ws = await console.ws_connect(f"/ws?token={GATEWAY_KEY}")
    await ws.send_json({"type": "chat", "sessionId": "feed-2", "text": "喂"})
    await feed.until(lambda m: m["type"] == "delta")
    await ws.send_json({"type": "interrupt", "sessionId": "feed-2", "spokenText": "您好"})
    end = await feed.until(lambda m: m["type"] == "end")
    assert end["status"] == "cancelled" and end["spokenText"] == "您好"
    await ws.close()


async def test_nobody_watching_leaves_the_engine_unhooked(console: TestClient[Any, Any]) -> None:
    engine = console.app[ENGINE]
    assert engine.observer is None
    viewer = await open_feed(console)
    assert engine.observer is not None
    viewer.response.close()
    await poll_metric(console, "callagent_console_viewers", 0)
    # The next turn finds nobody watching and unhooks the feed: no later turn pays for it.
    await console.post("/chat", json=body("quiet", text="喂"), headers=auth(GATEWAY_KEY))
    assert engine.observer is None


async def test_a_viewer_joining_mid_call_gets_the_calls_and_their_turn_counts(console: TestClient[Any, Any]) -> None:
    for text in ("喂", "方便"):
        await console.post("/chat", json=body("earlier", text=text), headers=auth(GATEWAY_KEY))
    viewer = await open_feed(console)
    await console.post("/chat", json=body("earlier", text="沪A8939"), headers=auth(GATEWAY_KEY))
    summary = await viewer.until(lambda m: m["type"] == "call" and m["turns"] == 3)
    assert summary["session"] == "earlier"
    viewer.response.close()


# -- stepping in ----------------------------------------------------------------------------


async def test_interrupt_from_the_console_stops_the_turn_and_names_the_operator(
    console: TestClient[Any, Any], feed: Feed
) -> None:
    stream = await console.post("/chat?stream=true", json=body("step-1", text="喂"), headers=auth(GATEWAY_KEY))
    await feed.until(lambda m: m["type"] == "delta")
    with capture_logs() as logs:
        response = await console.post("/console/api/sessions/step-1/interrupt", headers=auth(CONSOLE_KEY))
    assert response.status == 200
    assert (await response.json())["cancelled"] is True
    frames = parse_sse(await stream.read())
    assert frames[-1][0] == "done" and frames[-1][1]["status"] == "cancelled"
    action = await feed.until(lambda m: m["type"] == "action")
    assert action == action | {"session": "step-1", "action": "interrupt", "who": "alice", "cancelled": True}
    logged = [e for e in logs if e["event"] == "console_action"]
    assert logged and logged[0]["who"] == "alice" and logged[0]["session_id"] == "step-1"


async def test_set_variable_undo_and_end_go_through_the_session_commands(
    console: TestClient[Any, Any], feed: Feed
) -> None:
    key = auth(CONSOLE_KEY)
    await console.post("/chat", json=body("step-2", text="喂"), headers=auth(GATEWAY_KEY))
    response = await console.post(
        "/console/api/sessions/step-2/variables", json={"key": "note", "value": 7}, headers=key
    )
    assert (await response.json())["who"] == "alice"
    session = await (await console.get("/console/api/sessions/step-2", headers=key)).json()
    assert session["variables"]["note"] == 7 and len(session["turns"]) == 1
    assert not any(k.startswith("_") for k in session["variables"])  # the agent's own state stays inside
    undone = await (await console.post("/console/api/sessions/step-2/undo", headers=key)).json()
    assert undone["turnId"] == session["turns"][0]["turnId"]
    assert (await (await console.get("/console/api/sessions/step-2", headers=key)).json())["turns"][0]["deleted"]
    assert (await console.post("/console/api/sessions/step-2/end", headers=key)).status == 200
    ended = await feed.until(lambda m: m["type"] == "call" and m["state"] == "ended")
    assert ended["session"] == "step-2"
    gone = await console.get("/console/api/sessions/step-2", headers=key)
    assert gone.status == 404 and (await gone.json())["type"] == "session_not_found"


async def test_bad_console_requests_get_the_documented_errors(console: TestClient[Any, Any]) -> None:
    key = auth(CONSOLE_KEY)
    assert (await console.get("/console/api/sessions/nobody", headers=key)).status == 404
    bad = await console.get("/console/api/sessions/bad%20id", headers=key)
    assert bad.status == 422 and (await bad.json())["type"] == "invalid_request"
    await console.post("/chat", json=body("step-3", text="喂"), headers=auth(GATEWAY_KEY))
    response = await console.post("/console/api/sessions/step-3/variables", data=b"{", headers=key)
    assert response.status == 400 and (await response.json())["type"] == "malformed_json"


# -- the transcript route -------------------------------------------------------------------


async def test_transcript_route_returns_the_turns(console: TestClient[Any, Any]) -> None:
    gateway = auth(GATEWAY_KEY)
    ws = await console.ws_connect(f"/ws?token={GATEWAY_KEY}")
    await ws.send_json({"type": "chat", "sessionId": "tr-1", "text": "喂"})
    while (await ws.receive_json(timeout=5))["type"] != "text_delta":
        pass
    await ws.send_json({"type": "interrupt", "sessionId": "tr-1", "spokenText": "您好"})
    while (await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    await ws.close()
    await console.post("/chat", json=body("tr-1", text="方便"), headers=gateway)
    response = await console.get("/transcript?sessionId=tr-1&timeStamp=7", headers=gateway)
    data = await response.json()
    assert data["code"] == "200" and data["sessionId"] == "tr-1" and data["timeStamp"] == "7"
    first, second = data["turns"]
    assert first["callerText"] == "喂" and first["status"] == "cancelled" and first["spokenText"] == "您好"
    assert first["transport"] == "ws" and first["replyText"].startswith("您好")
    assert second["status"] == "completed" and second["stageCodes"] == ["1002"] and second["errorType"] is None
    assert second["timings"]["total_ms"] > 0 and not second["deleted"]
    assert set(second) == {
        "turnId", "callerText", "replyText", "spokenText", "stageCodes", "status", "errorType",
        "transport", "timeStamp", "receivedAt", "timings", "deleted",
    }  # fmt: skip
    missing = await console.get("/transcript?sessionId=nobody", headers=gateway)
    assert missing.status == 404 and (await missing.json())["type"] == "session_not_found"
    assert (await console.get("/transcript", headers=gateway)).status == 422
    assert (await console.get("/transcript?sessionId=tr-1")).status == 401


# -- slow viewers ---------------------------------------------------------------------------


async def test_a_viewer_that_stops_reading_is_dropped_and_calls_go_on(make_client: MakeClient) -> None:
    client = await make_client(settings(console_viewer_buffer=4, sse_send_timeout=0.5))
    stalled = await stalled_viewer(client.server.port)  # type: ignore[arg-type]
    try:
        await poll_metric(client, "callagent_console_viewers", 1)
        give_up = time.monotonic() + 15
        n = 0
        # Calls go on while the stalled page's socket buffers fill; then it is dropped.
        while await metric(client, "callagent_console_viewers_dropped_total") == 0:
            assert time.monotonic() < give_up, "the stalled viewer was never dropped"
            replies = await asyncio.gather(
                *(client.post("/chat", json=body(f"busy-{n}-{k}", text="喂")) for k in range(20))
            )
            for reply in replies:
                assert (await reply.json())["status"] == "completed"
            n += 1
        await poll_metric(client, "callagent_console_viewers", 0)
    finally:
        stalled.close()


async def stalled_viewer(port: int) -> socket.socket:
    """A console page that asks for the feed, then never reads (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET /console/api/feed HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


# -- helpers --------------------------------------------------------------------------------


async def metric(client: TestClient[Any, Any], name: str) -> float:
    text = await (await client.get("/metrics", headers=auth(GATEWAY_KEY))).text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def poll_metric(client: TestClient[Any, Any], name: str, value: float, deadline: float = 5.0) -> None:
    give_up = time.monotonic() + deadline
    while (current := await metric(client, name)) != value:
        assert time.monotonic() < give_up, f"{name} is {current}, not {value}"
        await asyncio.sleep(0.02)


# -- failures and the softphone ---------------------------------------------------------------


async def test_a_failed_turn_reaches_the_feed_with_its_error(
    make_client: MakeClient, fastgpt_settings: Settings, emulator: Any
) -> None:
    emulator.set_fault("http500")
    client = await make_client(fastgpt_settings)
    viewer = await open_feed(client, key=None)
    await client.post("/chat", json=body("fails", text="喂"))
    end = await viewer.until(lambda m: m["type"] == "end")
    assert end["status"] == "failed" and end["error"]["type"] == "upstream_error"
    fallback = "".join(m["text"] for m in viewer.seen if m["type"] == "delta")
    assert fallback == fastgpt_settings.fallback_text  # what the caller heard instead
    summary = await viewer.until(lambda m: m["type"] == "call")
    assert summary["state"] == "failed"
    turns = (await (await client.get("/transcript?sessionId=fails")).json())["turns"]
    assert turns[0]["status"] == "failed" and turns[0]["errorType"] == "upstream_error"
    viewer.response.close()


async def test_the_softphone_socket_needs_a_console_key(console: TestClient[Any, Any], feed: Feed) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await console.ws_connect(f"/console/api/ws?token={GATEWAY_KEY}")
    assert refused.value.status == 401
    ws = await console.ws_connect(f"/console/api/ws?token={CONSOLE_KEY}")
    await ws.send_json({"type": "start", "sessionId": "phone-1"})
    assert (await ws.receive_json(timeout=5))["type"] == "ack"
    await ws.send_json({"type": "chat", "text": "喂"})
    while (message := await ws.receive_json(timeout=5))["type"] != "done":
        pass
    assert message["status"] == "completed"
    started = await feed.until(lambda m: m["type"] == "turn")
    assert started["session"] == "phone-1" and started["transport"] == "ws"
    await ws.close()


# -- several instances through Redis ----------------------------------------------------------


async def test_instances_sharing_redis_share_the_feed(make_client: MakeClient, redis_url: str) -> None:
    a = await make_client(settings(store=redis_url, local_chunk_delay=0.01))
    b = await make_client(settings(store=redis_url, local_chunk_delay=0.01))
    await b.post("/chat", json=body("on-b-before", text="喂"))  # nobody watches yet
    viewer = await open_feed(a, key=None)
    # B hears that A has a viewer (through Redis) and starts observing its turns.
    give_up = time.monotonic() + 5
    while b.app[ENGINE].observer is None:
        assert time.monotonic() < give_up, "B never heard that A has a viewer"
        await asyncio.sleep(0.01)
    await b.post("/chat", json=body("on-b", text="喂"))
    started = await viewer.until(lambda m: m["type"] == "turn")
    assert started["session"] == "on-b"
    end = await viewer.until(lambda m: m["type"] == "end")
    assert end["session"] == "on-b" and end["status"] == "completed"
    # A second viewer gets the calls B knows (a sync through Redis), with its turn count.
    late = await open_feed(a, key=None)
    summary = await late.until(lambda m: m["type"] == "call" and m["session"] == "on-b")
    assert summary["state"] == "waiting" and summary["turns"] == 1
    viewer.response.close()
    late.response.close()


def test_console_keys_from_the_environment_name_their_operators() -> None:
    from callagent.console.access import ConsoleAccess

    loaded = Settings.from_env({"CALLAGENT_CONSOLE_KEYS": " alice:k-one , k-two ", "CALLAGENT_HOST": "0.0.0.0"}, None)
    assert "k-one" not in repr(loaded)  # secrets stay out of reprs and logs
    access = ConsoleAccess.from_settings(loaded)
    assert access.enabled
    assert [access.operator(k) for k in ("k-one", "k-two", "alice:k-one", "", "k-three")] == [
        "alice", "key-2", None, None, None,
    ]  # fmt: skip
    closed = ConsoleAccess.from_settings(Settings.from_env({"CALLAGENT_HOST": "0.0.0.0"}, None))
    assert not closed.enabled and closed.operator("") is None
    with pytest.raises(ValueError, match="CALLAGENT_CONSOLE_VIEWER_BUFFER"):
        Settings.from_env({"CALLAGENT_CONSOLE_VIEWER_BUFFER": "0"}, None)
