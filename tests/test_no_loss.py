"""Never lose or mix data: concurrent variable writes, turn ids shared by sessions, refused
writes, validation before side effects, undo against a running turn, variable caps."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from callagent.settings import Settings
from callagent.store import SQLiteStore, sqlite_path
from scripts.emulators import fastgpt as fe

from .conftest import body, parse_sse
from .test_bargein_http import LONG_REPLY, first_frame
from .test_websocket import is_terminal, until


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/loss.db"


async def test_concurrent_set_info_after_a_restart_keeps_every_write(make_client: Any, store_url: str) -> None:
    settings = Settings(upstream="local", store=store_url)
    first = await make_client(settings)
    assert (await first.post("/set_info", json=body("l1", key="k0", value=0))).status == 200
    await first.close()
    client = await make_client(settings)  # nothing of the session is cached in this process
    replies = await asyncio.gather(
        *(client.post("/set_info", json=body("l1", key=f"k{i}", value=i)) for i in range(1, 21))
    )
    assert [r.status for r in replies] == [200] * 20
    info = (await (await client.post("/get_info", json=body("l1"))).json())["info"]
    assert info == {f"k{i}": i for i in range(21)}


async def test_a_turn_id_used_by_two_sessions_keeps_both_transcripts(
    make_client: Any, fastgpt_settings: Settings
) -> None:
    client = await make_client(fastgpt_settings)
    ws = await client.ws_connect("/ws")
    for session_id in ("l2a", "l2b"):  # at once, on one multiplexed socket
        await ws.send_json({"type": "chat", "sessionId": session_id, "text": f"我是{session_id}", "turnId": "same"})
    ends = [await until(ws, is_terminal) for _ in range(2)]
    assert [m[-1]["status"] for m in ends] == ["completed", "completed"]
    await ws.close()
    await client.close()
    store = SQLiteStore(sqlite_path(fastgpt_settings.store))
    await store.open()
    try:
        rows = {sid: await store.turns(sid) for sid in ("l2a", "l2b")}
    finally:
        await store.close()
    assert [(r.turn_id, r.caller_text) for r in rows["l2a"]] == [("same", "我是l2a")]
    assert [(r.turn_id, r.caller_text) for r in rows["l2b"]] == [("same", "我是l2b")]


def refuse_writes(path: Path) -> sqlite3.Connection:
    """Make the database refuse every write, as a full disk does, from another connection."""
    db = sqlite3.connect(path, isolation_level=None)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        if table.startswith("sqlite_"):
            continue
        for event in ("INSERT", "UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER full_{table}_{event} BEFORE {event} ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
    return db


def accept_writes(db: sqlite3.Connection) -> None:
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.close()


async def test_a_refused_write_is_not_read_back_and_readiness_and_the_turn_say_so(
    make_client: Any, tmp_path: Path
) -> None:
    settings = Settings(upstream="local", store=f"sqlite:///{tmp_path}/full.db")
    client = await make_client(settings)
    assert (await client.post("/set_info", json=body("l3", key="k", value="before"))).status == 200
    assert (await client.get("/readyz")).status == 200
    db = refuse_writes(sqlite_path(settings.store))
    resp = await client.post("/set_info", json=body("l3", key="k", value="after"))
    assert resp.status == 503 and (await resp.json())["type"] == "store_unavailable"
    assert (await (await client.post("/get_info", json=body("l3", key="k"))).json())["value"] == "before"
    assert (await client.get("/readyz")).status == 503
    frames = parse_sse(await (await client.post("/chat?stream=true", json=body("l3", text="喂"))).read())
    assert frames[-1][0] == "done" and frames[-1][1]["transcriptSaved"] is False
    reply = await (await client.post("/chat", json=body("l3", text="喂"))).json()
    assert reply["status"] == "completed" and reply["transcriptSaved"] is False
    accept_writes(db)
    assert (await client.get("/readyz")).status == 200
    frames = parse_sse(await (await client.post("/chat?stream=true", json=body("l3", text="喂"))).read())
    assert "transcriptSaved" not in frames[-1][1]


async def test_readiness_fails_when_the_database_file_is_gone(make_client: Any, tmp_path: Path) -> None:
    settings = Settings(upstream="local", store=f"sqlite:///{tmp_path}/gone.db")
    client = await make_client(settings)
    assert (await client.get("/readyz")).status == 200
    sqlite_path(settings.store).unlink()
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["type"] == "store_unavailable"


async def test_a_bad_time_stamp_is_refused_before_anything_happens(client: Any) -> None:
    bad = {"timeStamp": {"not": "a stamp"}}
    resp = await client.post("/set_info", json={**body("l4", key="k", value="v"), **bad})
    assert resp.status == 422 and "timeStamp" in (await resp.json())["msg"]
    assert (await client.post("/get_info", json=body("l4"))).status == 404, "nothing was written"
    assert (await client.post("/set_info", json=body("l4", key="k", value="v"))).status == 200
    resp = await client.post("/delete_session", json={**body("l4"), **bad})
    assert resp.status == 422
    assert (await client.post("/get_info", json=body("l4"))).status == 200, "nothing was deleted"


async def test_delete_last_turn_is_refused_while_a_turn_runs(fastgpt_client: Any, emulator: Any) -> None:
    emulator.brain = fe.ScriptedBrain(["<state>1002</state>第一句。", LONG_REPLY])
    assert (await (await fastgpt_client.post("/chat", json=body("l5", text="喂"))).json())["status"] == "completed"
    emulator.chunk_delay = 0.05
    stream = await fastgpt_client.post("/chat?stream=true", json=body("l5", text="还在吗"))
    await first_frame(stream, "text_delta")
    resp = await fastgpt_client.post("/delete_last_turn", json=body("l5"))
    assert resp.status == 409 and (await resp.json())["type"] == "session_busy"
    frames = parse_sse(await stream.read())
    assert frames[-1][1]["status"] == "completed"
    undone = await (await fastgpt_client.post("/delete_last_turn", json=body("l5"))).json()
    assert undone["turnId"] == frames[-1][1]["turnId"]


async def test_variables_per_session_are_capped(make_client: Any) -> None:
    client = await make_client(
        Settings(upstream="local", store="memory://", max_variables=3, max_variables_bytes=200)
    )
    for key in ("a", "b", "c"):
        assert (await client.post("/set_info", json=body("l6", key=key, value="x"))).status == 200
    resp = await client.post("/set_info", json=body("l6", key="d", value="x"))
    assert resp.status == 413 and (await resp.json())["type"] == "variables_limit"
    assert (await client.post("/set_info", json=body("l6", key="a", value="y"))).status == 200, "a key kept"
    resp = await client.post("/set_info", json=body("l6", key="b", value="z" * 300))
    assert resp.status == 413
    info = (await (await client.post("/get_info", json=body("l6"))).json())["info"]
    assert info == {"a": "y", "b": "x", "c": "x"}
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "start", "sessionId": "l7", "variables": {f"k{i}": i for i in range(4)}})
    reply = await ws.receive_json()
    assert reply["type"] == "error" and reply["error"] == "variables_limit"
