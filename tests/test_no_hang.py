"""Never a hang: a turn stopped before it ran, upstream calls that never answer, a stalled disk,
clients that never finish their request."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from callagent.settings import Settings
from callagent.store import sqlite_path
from scripts.emulators import fastgpt as fe

from .conftest import body, parse_sse
from .test_bargein_http import LONG_REPLY, first_frame, no_running_turns
from .test_websocket import is_terminal, until


@pytest.fixture
async def silent_upstream() -> AsyncIterator[str]:
    """An HTTP upstream that accepts connections and reads requests, but never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


def silent_settings(url: str, **changes: Any) -> Settings:
    return Settings(
        upstream="fastgpt",
        fastgpt_base_url=url,
        fastgpt_api_key="fastgpt-test",  # type: ignore[arg-type]
        fastgpt_app_id="app1",
        store="memory://",
        upstream_request_timeout=0.3,
        **changes,
    )


async def within(seconds: float, awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


# -- a turn stopped before its task started -------------------------------------------------


async def test_ws_chat_and_interrupt_in_one_write_end_the_turn(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>1002</state>在的。"])
    ws = await fastgpt_client.ws_connect("/ws")
    chat = {"type": "chat", "sessionId": "n1", "text": "喂", "turnId": "t1"}
    interrupt = {"type": "interrupt", "sessionId": "n1", "spokenText": ""}
    # Nothing yields between the two sends: both frames go out before the server reads.
    await ws.send_str(orjson.dumps(chat).decode())
    await ws.send_str(orjson.dumps(interrupt).decode())
    msgs = await until(ws, lambda m: m["type"] == "ack" and m.get("for") == "interrupt", timeout=3)
    terminals = [m for m in msgs if is_terminal(m)]
    assert [(m["turnId"], m["type"], m.get("status")) for m in terminals] == [("t1", "done", "cancelled")]
    assert msgs[-1]["cancelled"] is True
    await ws.send_json({"type": "chat", "sessionId": "n1", "text": "还在吗"})
    last = (await until(ws, is_terminal, timeout=3))[-1]
    assert last["status"] == "completed"
    await no_running_turns(fastgpt_client)


async def test_two_chats_at_the_same_moment_both_answer(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>好的。"])
    server = fastgpt_client.server
    request = (
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    )
    payload = orjson.dumps(body("n2", text="喂"))
    streams = [await asyncio.open_connection(server.host, server.port) for _ in range(2)]
    for _, writer in streams:  # both requests reach the server in the same loop iteration
        writer.write(request % (len(payload), payload))
    replies = await within(5, asyncio.gather(*(reader.read() for reader, _ in streams)))
    statuses = sorted(orjson.loads(r.partition(b"\r\n\r\n")[2])["status"] for r in replies)
    assert statuses == ["cancelled", "completed"]
    for _, writer in streams:
        writer.close()
    await no_running_turns(fastgpt_client)


# -- upstream calls that never answer --------------------------------------------------------


async def test_readyz_answers_in_time_when_the_upstream_never_answers(make_client: Any, silent_upstream: str) -> None:
    client = await make_client(silent_settings(silent_upstream))
    resp = await within(2, client.get("/readyz"))
    assert resp.status == 504 and (await resp.json())["type"] == "upstream_timeout"


async def test_delete_session_deletes_here_when_the_upstream_never_answers(
    make_client: Any, silent_upstream: str
) -> None:
    client = await make_client(silent_settings(silent_upstream))
    assert (await client.post("/set_info", json=body("n3", key="k", value="v"))).status == 200
    resp = await within(2, client.post("/delete_session", json=body("n3")))
    data = await resp.json()
    assert resp.status == 200 and data["upstreamDeleted"] is False
    assert data["upstreamError"]["type"] == "upstream_timeout"
    assert (await client.post("/get_info", json=body("n3"))).status == 404


@pytest.fixture
async def stalling_deletes(aiohttp_server: Any) -> AsyncIterator[tuple[str, Any]]:
    """The FastGPT emulator, except that record and history deletes never answer."""
    app = fe.create_emulator_app()
    released = asyncio.Event()

    @web.middleware
    async def never_answer_deletes(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "DELETE":
            await released.wait()
        return await handler(request)

    app.middlewares.append(never_answer_deletes)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/"), app[fe.EMULATOR]
    released.set()


async def test_delete_on_interrupt_never_wedges_the_session(
    make_client: Any, stalling_deletes: tuple[str, Any]
) -> None:
    url, emulator = stalling_deletes
    emulator.brain = fe.ScriptedBrain([LONG_REPLY, "<state>1002</state>在的。"])
    emulator.chunk_delay = 0.05
    client = await make_client(silent_settings(url, interrupt_records="delete"))
    first = await client.post("/chat?stream=true", json=body("n4", text="喂"))
    await first_frame(first, "text_delta")
    second = await within(3, client.post("/chat", json=body("n4", text="还在吗")))
    assert (await second.json())["status"] == "completed"
    assert parse_sse(await first.read())[-1][1]["status"] == "cancelled"
    await within(3, client.close())  # shutdown does not wait on the stalled delete either


# -- a stalled disk under SQLite --------------------------------------------------------------


@pytest.fixture
def stalled_disk(tmp_path: Path) -> Iterator[tuple[Settings, Any]]:
    """SQLite settings, and a function that stalls every write of that database (another
    connection takes the write lock) until the test ends."""
    settings = Settings(upstream="local", store=f"sqlite:///{tmp_path}/stall.db", store_timeout=0.3)
    holders: list[sqlite3.Connection] = []

    def stall() -> None:
        db = sqlite3.connect(sqlite_path(settings.store), isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        holders.append(db)

    yield settings, stall
    for db in holders:
        db.execute("ROLLBACK")
        db.close()


async def test_a_stalled_disk_gives_503_in_time_and_the_turn_its_fallback(
    make_client: Any, stalled_disk: tuple[Settings, Any]
) -> None:
    settings, stall = stalled_disk
    client = await make_client(settings)
    assert (await client.post("/set_info", json=body("n5", key="k", value="v"))).status == 200
    stall()
    resp = await within(1.5, client.post("/set_info", json=body("n5", key="k", value="w")))
    assert resp.status == 503 and (await resp.json())["type"] == "store_unavailable"
    resp = await within(1.5, client.get("/readyz"))
    assert resp.status == 503 and (await resp.json())["type"] == "store_unavailable"
    resp = await within(2, client.post("/chat?stream=true", json=body("n6", text="喂")))
    frames = parse_sse(await within(2, resp.read()))
    assert "".join(f[1].get("text", "") for f in frames if f[0] == "text_delta") == settings.fallback_text
    assert frames[-1][0] == "error" and frames[-1][1]["type"] == "store_unavailable"


# -- clients that never finish their request ---------------------------------------------------


async def test_a_body_that_never_finishes_is_cut_off(make_client: Any) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", request_read_timeout=0.3))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b'POST /set_info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"sessionId"')
    raw = await within(3, reader.read())  # the server answers, then closes the connection
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and orjson.loads(payload)["type"] == "request_timeout"
    writer.close()


async def test_headers_that_never_finish_are_cut_off(make_client: Any) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", request_read_timeout=0.3))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /chat HTTP/1.1\r\nHost: x\r\n")
    assert await within(2, reader.read()) == b""  # closed by the server
    writer.close()


async def test_a_turn_s_first_token_deadline_covers_its_store_reads(
    make_client: Any, stalled_disk: tuple[Settings, Any]
) -> None:
    settings, stall = stalled_disk
    client = await make_client(settings.with_(store_timeout=1, first_token_timeout=0.4))
    stall()
    # A write waits on the disk, and the store's one thread with it (beyond the write's own
    # deadline): reads queue behind it.
    assert (await client.post("/set_info", json=body("n7", key="k", value="v"))).status == 503
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await within(2, client.post("/chat?stream=true", json=body("n7", text="喂")))
    buffer = b""
    while settings.fallback_text.encode() not in buffer:  # the caller hears the fallback in time
        buffer += await within(2, resp.content.readany())
    assert loop.time() - started < 0.9  # the first-token deadline, not the store's own 1 s
    frames = parse_sse(buffer + await within(4, resp.read()))  # the record's write may take its own deadline
    assert frames[-1][0] == "error" and frames[-1][1]["type"] == "store_unavailable"
