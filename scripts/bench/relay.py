"""The bare relay: the reference callagent's CPU per turn is measured against.

A minimal aiohttp app, run as its own process (``python -m scripts.bench.relay --upstream URL
--port N``), that does no more than any relay between a voice gateway and FastGPT must: per
turn one upstream request, the upstream's SSE frames parsed (with callagent's own reader), and
one write to the client per forwarded piece of text. It speaks callagent's three streaming
shapes, so the benchmark drives both with the same client code:

- ``POST /chat?stream=true``: ``text_delta`` SSE events, then ``done``;
- ``GET /ws``: ``start`` (answered ``ack``), then per ``chat`` message ``text_delta`` messages
  and ``done``;
- ``POST /v1/chat/completions`` (``stream: true``): OpenAI ``chat.completion.chunk`` lines (a
  role chunk, one chunk per piece, a stop chunk) and ``data: [DONE]``.

What it leaves out is what callagent adds on top: sessions and stores, stage tags, barge-in,
fallback, transcripts, metrics, logs, validation, deadlines. The difference in CPU per turn is
the price of those.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from callagent.sse import read_events

API_KEY = "fastgpt-test"
UPSTREAM = web.AppKey("upstream", str)
HTTP = web.AppKey("http", aiohttp.ClientSession)


async def pieces(app: web.Application, session_id: str, text: str) -> AsyncIterator[str]:
    """One upstream request; the reply's text pieces as the upstream frames arrive."""
    body = orjson.dumps(
        {
            "chatId": session_id,
            "stream": True,
            "detail": True,
            "variables": {},
            "messages": [{"role": "user", "content": text}],
        }
    )
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    url = app[UPSTREAM] + "/api/v1/chat/completions"
    async with app[HTTP].post(url, data=body, headers=headers) as r:
        async for name, data in read_events(r):
            if name != b"answer" or not data.startswith(b"{"):
                continue
            choices = orjson.loads(data)["choices"]
            content = choices[0]["delta"].get("content") if choices else None
            if content:
                yield content


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    async for piece in pieces(request.app, body["sessionId"], body["text"]):
        await response.write(b"event: text_delta\ndata: " + orjson.dumps({"text": piece}) + b"\n\n")
    await response.write(b'event: done\ndata: {"status":"completed"}\n\n')
    return response


async def ws(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse(heartbeat=None)
    await socket.prepare(request)
    session_id = ""
    async for msg in socket:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        data = orjson.loads(msg.data)
        if data.get("type") == "start":
            session_id = data.get("sessionId", "")
            await socket.send_str('{"type":"ack","for":"start"}')
        elif data.get("type") == "chat":
            async for piece in pieces(request.app, session_id, data.get("text", "")):
                await socket.send_str(orjson.dumps({"type": "text_delta", "text": piece}).decode())
            await socket.send_str('{"type":"done","status":"completed"}')
    return socket


def chunk(head: bytes, delta: dict[str, str], finish: str | None) -> bytes:
    tail = orjson.dumps({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish})
    return b"data: " + head + tail + b"]}\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    session_id = request.headers.get("X-Callagent-Session", "")
    text = body["messages"][-1]["content"]
    created = int(time.time())
    head = (
        orjson.dumps(
            {"id": f"chatcmpl-{session_id}", "object": "chat.completion.chunk", "created": created, "model": "relay"}
        )[:-1]
        + b',"choices":['
    )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(chunk(head, {"role": "assistant", "content": ""}, None))
    async for piece in pieces(request.app, session_id, text):
        await response.write(chunk(head, {"content": piece}, None))
    await response.write(chunk(head, {}, "stop") + b"data: [DONE]\n\n")
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream

    async def client(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            app[HTTP] = http
            yield

    app.cleanup_ctx.append(client)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/chat", chat)
    app.router.add_get("/ws", ws)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.relay", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the FastGPT emulator's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="as callagent's")
    args = parser.parse_args()
    loop = None
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop = uvloop.new_event_loop()
    app = make_app(args.upstream)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
