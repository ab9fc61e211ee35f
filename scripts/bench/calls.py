"""One call: an SSE turn through callagent or straight to the emulator, a WebSocket call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from callagent.segment import ClauseSegmenter  # the direct side uses callagent's own rules
from callagent.sse import SSEEvent, SSEParser
from callagent.tags import StageTag, StateTagParser

from .common import API_KEY, CALL_TIMEOUT, CALLER_TEXT, JSON_HEADERS


@dataclass(slots=True)
class Turn:
    """One turn as the load generator saw it. Times are seconds after the request was sent."""

    sent: float  # monotonic
    first: float | None = None  # first text (or first clause)
    ended: float | None = None  # monotonic, the stream or message exchange is over
    events: int = 0  # events forwarded by callagent (or speakable chunks read directly)
    error: str | None = None


async def timed_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, SSEEvent]]:
    """Every SSE event of a response (callagent's reader), with the time its bytes arrived."""
    parser = SSEParser()
    async for block in response.content.iter_any():
        now = time.monotonic()
        for event in parser.feed(block):
            yield now, event
    for event in parser.finish():
        yield time.monotonic(), event


async def sse_via(http: aiohttp.ClientSession, base: str, session_id: str, clause: bool) -> Turn:
    """``POST /chat?stream=true`` through callagent; first = first ``text_delta``."""
    url = base + ("/chat?stream=true&segment=clause" if clause else "/chat?stream=true")
    body = orjson.dumps({"sessionId": session_id, "timeStamp": "0", "text": CALLER_TEXT})
    turn = Turn(time.monotonic())
    status = None
    try:
        async with asyncio.timeout(CALL_TIMEOUT), http.post(url, data=body, headers=JSON_HEADERS) as r:
            if r.status != 200:
                turn.error = f"HTTP {r.status}"
                return turn
            async for now, (name, data) in timed_events(r):
                turn.events += 1
                if name == b"text_delta":
                    if turn.first is None:
                        turn.first = now - turn.sent
                elif name == b"done":
                    status = "completed" if b'"completed"' in data else "cancelled"
                elif name == b"error":
                    status = "error: " + data[:200].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
        turn.error = f"{type(e).__name__}: {e}"
        return turn
    turn.ended = time.monotonic()
    if status != "completed":
        turn.error = status or "stream ended without a terminal event"
    return turn


def direct_body(session_id: str) -> bytes:
    return orjson.dumps(
        {
            "chatId": session_id,
            "stream": True,
            "detail": True,
            "variables": {},
            "messages": [{"role": "user", "content": CALLER_TEXT}],
        }
    )


async def sse_direct(http: aiohttp.ClientSession, base: str, session_id: str, clause: bool) -> Turn:
    """The same turn read straight from the emulator; first = first speakable chunk (or clause)."""
    headers = JSON_HEADERS | {"Authorization": f"Bearer {API_KEY}"}
    turn = Turn(time.monotonic())
    parser = StateTagParser()
    segmenter = ClauseSegmenter() if clause else None
    completed = False
    try:
        async with (
            asyncio.timeout(CALL_TIMEOUT),
            http.post(base + "/api/v1/chat/completions", data=direct_body(session_id), headers=headers) as r,
        ):
            if r.status != 200:
                turn.error = f"HTTP {r.status}"
                return turn
            async for now, (name, data) in timed_events(r):
                if name == b"workflowDuration":
                    completed = True
                elif name == b"error":
                    turn.error = "error: " + data[:200].decode(errors="replace")
                elif name == b"answer" and data.startswith(b"{"):
                    delta = orjson.loads(data)["choices"][0]["delta"]
                    content = delta.get("content")
                    if not content:
                        continue
                    turn.events += 1
                    if turn.first is not None:
                        continue
                    for item in parser.feed(content):
                        if isinstance(item, StageTag) or not item:
                            continue
                        if segmenter is None or segmenter.feed(item):
                            turn.first = now - turn.sent
                            break
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
        turn.error = f"{type(e).__name__}: {e}"
        return turn
    turn.ended = time.monotonic()
    if not completed and turn.error is None:
        turn.error = "stream ended before workflowDuration"
    return turn


class WsCall:
    """A gateway socket carrying one call: ``chat`` then messages until ``done``."""

    def __init__(self, http: aiohttp.ClientSession, base: str, session_id: str) -> None:
        self.http = http
        self.url = base + "/ws"
        self.session_id = session_id
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self) -> None:
        self.ws = await self.http.ws_connect(self.url, autoping=True, max_msg_size=4 * 1024 * 1024)
        await self.ws.send_str(orjson.dumps({"type": "start", "sessionId": self.session_id}).decode())
        await self.expect("ack")

    async def expect(self, kind: str) -> dict[str, Any]:
        assert self.ws is not None
        while True:  # bounded by the caller's timeout
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket closed ({msg.type.name}) while waiting for {kind}")
            data: dict[str, Any] = orjson.loads(msg.data)
            if data.get("type") == kind:
                return data
            if data.get("type") == "error":
                raise ConnectionError(f"error message: {data}")

    async def turn(self) -> Turn:
        turn = Turn(time.monotonic())
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                if self.ws is None:
                    await self.open()
                    turn.sent = time.monotonic()
                assert self.ws is not None
                await self.ws.send_str(orjson.dumps({"type": "chat", "text": CALLER_TEXT}).decode())
                while True:  # bounded by the timeout above
                    msg = await self.ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionError(f"socket closed ({msg.type.name})")
                    turn.events += 1
                    data = orjson.loads(msg.data)
                    kind = data.get("type")
                    if kind == "text_delta" and turn.first is None:
                        turn.first = time.monotonic() - turn.sent
                    elif kind == "done":
                        if data.get("status") != "completed":
                            turn.error = f"done: {data.get('status')}"
                        break
                    elif kind == "error":
                        turn.error = f"error: {data.get('error')}: {data.get('msg')}"
                        break
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
            turn.error = f"{type(e).__name__}: {e}"
            await self.close()
            return turn
        turn.ended = time.monotonic()
        return turn

    async def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            with contextlib.suppress(Exception):
                await ws.close()


class OpenAICall:
    """A voice platform's call over ``POST /v1/chat/completions``: each request carries the
    conversation so far, as platforms send it (an identical request would be a retry, which
    callagent answers from its transcript without a turn). The history keeps the last
    ``HISTORY`` messages; the caller's utterances are numbered so that no two requests match."""

    HISTORY = 20

    def __init__(self, http: aiohttp.ClientSession, base: str, session_id: str) -> None:
        self.http = http
        self.url = base + "/v1/chat/completions"
        self.headers = JSON_HEADERS | {"X-Callagent-Session": session_id}
        self.messages: list[dict[str, str]] = []
        self.count = 0

    async def turn(self) -> Turn:
        self.count += 1
        self.messages.append({"role": "user", "content": f"{CALLER_TEXT} {self.count}"})
        self.messages = self.messages[-self.HISTORY :]
        body = orjson.dumps({"model": "callagent", "stream": True, "messages": self.messages})
        turn = Turn(time.monotonic())
        reply: list[str] = []
        finished = False
        try:
            async with asyncio.timeout(CALL_TIMEOUT), self.http.post(self.url, data=body, headers=self.headers) as r:
                if r.status != 200:
                    turn.error = f"HTTP {r.status}"
                    return turn
                async for now, (_, data) in timed_events(r):
                    turn.events += 1
                    if data == b"[DONE]":
                        finished = True
                        continue
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        turn.error = "error: " + data[:200].decode(errors="replace")
                    elif chunk["choices"] and (content := chunk["choices"][0]["delta"].get("content")):
                        reply.append(content)
                        if turn.first is None:
                            turn.first = now - turn.sent
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
            turn.error = f"{type(e).__name__}: {e}"
            return turn
        turn.ended = time.monotonic()
        self.messages.append({"role": "assistant", "content": "".join(reply)})
        if not finished and turn.error is None:
            turn.error = "stream ended without [DONE]"
        return turn
