"""Never leak a secret, never let one client break the others: upstream failures that carry the
request's headers, header bytes that are not UTF-8, WebSocket bursts and slow consumers, stage
codes as metric labels, HTTP parser errors."""

from __future__ import annotations

import asyncio
import gzip
import socket
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from callagent.settings import Settings
from scripts.emulators import fastgpt as fe

from .canary import CANARY_KEY
from .conftest import body, parse_sse
from .redis_server import free_port, stop_process
from .test_process import serve
from .test_websocket import _drain_until_closed, _streams, is_terminal, receive, until


def upstream_settings(url: str, **changes: Any) -> Settings:
    return Settings(
        upstream="fastgpt",
        fastgpt_base_url=url,
        fastgpt_api_key=CANARY_KEY,  # type: ignore[arg-type]
        fastgpt_app_id="app1",
        store="memory://",
        upstream_request_timeout=1,
        **changes,
    )


@pytest.fixture
async def redirect_loop(aiohttp_server: Any) -> str:
    """An upstream that redirects every request to itself."""

    async def again(request: web.Request) -> web.Response:
        raise web.HTTPFound(location=request.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", again)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def garbage_upstream() -> AsyncIterator[str]:
    """An upstream that answers every request with bytes that are not HTTP."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"SURPRISE \x00\x01 not http\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_an_upstream_redirecting_in_a_loop_never_gets_the_key_out(make_client: Any, redirect_loop: str) -> None:
    await no_key_in_failures(await make_client(upstream_settings(redirect_loop)))


async def test_an_upstream_answering_garbage_never_gets_the_key_out(make_client: Any, garbage_upstream: str) -> None:
    await no_key_in_failures(await make_client(upstream_settings(garbage_upstream)))


async def no_key_in_failures(client: Any) -> None:
    with capture_logs() as logs:
        ready = await client.get("/readyz")
        chat = await client.post("/chat", json=body("k1", text="喂"))
        deleted = await client.post("/delete_session", json=body("k1"))
    assert ready.status in (502, 503)
    answers = [await ready.read(), await chat.read(), await deleted.read()]
    assert (await chat.json())["status"] == "failed"
    assert (await deleted.json())["upstreamDeleted"] is False
    for raw in [*answers, orjson.dumps(logs, default=str)]:
        assert CANARY_KEY.encode() not in raw  # the suite-wide canary scan checks this too


# -- header bytes that are not UTF-8 ---------------------------------------------------------


async def raw_request(client: Any, head: bytes, payload: bytes = b"") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_and_headers, _, content = raw.partition(b"\r\n\r\n")
    return status_and_headers, content


async def test_a_request_id_that_is_not_utf8_is_replaced(tmp_path: Path) -> None:
    """In the real process, with its JSON log lines: every turn of the request still runs."""
    port = free_port()
    process = serve(tmp_path, port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = orjson.dumps(body("k2", text="喂"))
        writer.write(
            b"POST /chat?stream=true HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\xff\xfeb\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload)
        )
        head, _, content = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 200") and b"\xff" not in head
        assert b"event: done" in content and b'"status":"completed"' in content
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws", headers={"X-Request-Id": "bad\udcff"})
            await ws.send_json({"type": "chat", "sessionId": "k2", "text": "喂"})
            assert (await until(ws, is_terminal))[-1]["status"] == "completed"
            await ws.close()
    finally:
        stop_process(process)


async def test_an_authorization_header_that_is_not_utf8_is_401(make_client: Any) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", api_keys=("k-1",)))  # type: ignore[arg-type]
    head, content = await raw_request(client, b"GET /readyz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n")
    assert head.startswith(b"HTTP/1.1 401") and orjson.loads(content)["type"] == "unauthorized"


# -- WebSocket bursts and slow consumers -----------------------------------------------------


async def test_a_burst_of_pings_in_one_write_is_answered_in_full(client: Any) -> None:
    ws = await client.ws_connect("/ws")
    for t in range(600):  # nothing yields between these: they reach the server in few reads
        await ws.send_str(f'{{"type":"ping","t":{t}}}')
    pongs = [await receive(ws) for _ in range(600)]
    assert [p["t"] for p in pongs] == list(range(600))


async def test_a_reply_arriving_in_many_chunks_at_once_is_delivered(fastgpt_client: Any, emulator: Any) -> None:
    reply = "好" * 1500
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>" + reply])
    emulator.chunk_chars = 1  # 1500 frames, sent without a pause: read in a few TCP reads
    ws = await fastgpt_client.ws_connect("/ws")
    await ws.send_json({"type": "chat", "sessionId": "k3", "text": "喂"})
    msgs = await until(ws, is_terminal)
    assert msgs[-1]["type"] == "done" and msgs[-1]["status"] == "completed"
    assert "".join(m["text"] for m in msgs if m["type"] == "text_delta") == reply


async def test_a_gateway_that_stops_reading_is_dropped_once_by_time(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.set_fault("big")
    emulator.chunk_chars = 2
    client = await make_client(fastgpt_settings.with_(ws_send_timeout=0.5))
    ws = await client.ws_connect("/ws")
    with capture_logs() as logs:
        await ws.send_json({"type": "chat", "sessionId": "k4", "text": "喂"})
        (stream,) = await _streams(emulator, 1)
        await asyncio.wait_for(stream.closed.wait(), 20)
    assert stream.outcome == "disconnected"
    assert [e["event"] for e in logs].count("ws_slow_consumer") == 1
    assert await asyncio.wait_for(_drain_until_closed(ws), 20) in (
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.ERROR,
    )


# -- stage codes -------------------------------------------------------------------------------


async def test_stage_codes_outside_the_format_never_reach_the_gateway_or_the_metrics(
    fastgpt_client: Any, emulator: Any
) -> None:
    codes = ["1002", "x" * 40, "a b", "Ω1", "../etc", "9999"]
    emulator.brain = fe.ScriptedBrain(["".join(f"<state>{c}</state>" for c in codes) + "好的。"])
    frames = parse_sse(await (await fastgpt_client.post("/chat?stream=true", json=body("k5", text="喂"))).read())
    sent = [f[1]["nextStageCode"] for f in frames if f[0] == "stage_code"]
    assert sent == ["1002", "9999"]
    metrics = (await (await fastgpt_client.get("/metrics")).read()).decode()
    labels = {
        line.split('code="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("callagent_stage_codes_total{")
    }
    assert labels == {"other"}, "the reply's last code, unknown to the stage table, is counted as other"


async def test_an_sse_gateway_that_stops_reading_is_dropped_with_one_warning(
    make_client: Any, fastgpt_settings: Any, emulator: Any
) -> None:
    emulator.set_fault("big")
    emulator.chunk_chars = 2
    client = await make_client(fastgpt_settings.with_(sse_send_timeout=0.5, sse_ping_interval=0.2))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((client.server.host, client.server.port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    payload = orjson.dumps(body("k6", text="喂"))
    with capture_logs() as logs:
        writer.write(
            b"POST /chat?stream=true HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )  # and never read
        (stream,) = await _streams(emulator, 1)
        await asyncio.wait_for(stream.closed.wait(), 20)
    assert stream.outcome == "disconnected", "the dropped gateway's turn closed its upstream"
    assert [e["event"] for e in logs].count("sse_slow_consumer") == 1
    writer.close()


# -- body encodings ---------------------------------------------------------------------------


async def test_an_unknown_content_encoding_is_a_json_415(client: Any) -> None:
    for encoding in ("br", "zstd", "compress"):
        head, content = await raw_request(
            client, f"POST /set_info HTTP/1.1\r\nHost: x\r\nContent-Encoding: {encoding}\r\n".encode(), b"xxxx"
        )
        assert head.startswith(b"HTTP/1.1 415"), head
        error = orjson.loads(content)
        assert error["type"] == "unsupported_encoding" and "brotli" not in error["msg"].lower()


async def test_compressed_bodies_are_decoded_within_the_size_limit(client: Any) -> None:
    payload = orjson.dumps(body("k7", key="k", value="压缩"))
    for encoding, data in (("gzip", gzip.compress(payload)), ("deflate", zlib.compress(payload))):
        head, _ = await raw_request(
            client, f"POST /set_info HTTP/1.1\r\nHost: x\r\nContent-Encoding: {encoding}\r\n".encode(), data
        )
        assert head.startswith(b"HTTP/1.1 200"), head
    bomb = gzip.compress(b'{"sessionId": "k7", "pad": "' + b" " * 10_000_000 + b'"}')
    head, content = await raw_request(client, b"POST /set_info HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n", bomb)
    assert head.startswith(b"HTTP/1.1 413") and orjson.loads(content)["type"] == "payload_too_large"


# -- requests the HTTP parser refuses (the real process and its server) ----------------------


async def test_requests_the_parser_refuses_get_the_json_error_shape(tmp_path: Path) -> None:
    port = free_port()
    process = serve(tmp_path, port)
    try:
        for request in (
            b"GET /healthz?" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # URL too long
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n",  # header too long
            b"POST /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # bad chunk
            b"NOT HTTP AT ALL\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head, _, content = (await asyncio.wait_for(reader.read(), 5)).partition(b"\r\n\r\n")
            writer.close()
            assert head.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), head
            assert b"application/json" in head, head
            error = orjson.loads(content)
            assert set(error) == {"code", "msg", "type"} and head[9:12].decode() == error["code"], error
            assert "aiohttp" not in error["msg"].lower(), error
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200, "the process keeps serving"
    finally:
        stop_process(process)
