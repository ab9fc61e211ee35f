"""The benchmark's reference relay and its garbage-collection counter work (the figures
themselves are for docs/benchmarks.md): one turn over each of the three shapes the benchmark
drives, through the relay to the FastGPT emulator, read by the benchmark's own client code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestServer

from scripts.bench.calls import OpenAICall, WsCall, sse_via
from scripts.bench.relay import API_KEY, make_app
from scripts.emulators import fastgpt as fastgpt_emulator

ROOT = Path(__file__).resolve().parent.parent


async def test_the_relay_forwards_each_shape(aiohttp_client: Any, aiohttp_server: Any) -> None:
    # The emulator with the benchmark's own key (the relay is a fixed reference, not configurable).
    emulator_server: TestServer = await aiohttp_server(fastgpt_emulator.create_emulator_app(api_key=API_KEY))
    upstream = str(emulator_server.make_url("")).rstrip("/")
    client = await aiohttp_client(make_app(upstream))
    base = str(client.make_url("")).rstrip("/")
    sse = await sse_via(client.session, base, "relay-sse", clause=False)
    ws = WsCall(client.session, base, "relay-ws")
    try:
        first_ws, second_ws = await ws.turn(), await ws.turn()
    finally:
        await ws.close()
    openai = OpenAICall(client.session, base, "relay-openai")
    first_openai, second_openai = await openai.turn(), await openai.turn()
    for turn in (sse, first_ws, second_ws, first_openai, second_openai):
        assert turn.error is None and turn.first is not None and turn.events >= 2
    # The OpenAI call carries its history: the second request held the first reply.
    assert [m["role"] for m in openai.messages] == ["user", "assistant", "user", "assistant"]
    assert openai.messages[1]["content"]


def test_gcwatch_writes_the_collection_counts_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "gc.json"
    program = "import gc; gc.collect(); gc.collect()"
    (tmp_path / "collector.py").write_text(program)
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "scripts.bench.gcwatch", str(out), "collector"]
    subprocess.run(argv, env=env, cwd=tmp_path, check=True, timeout=30)
    counts = orjson.loads(out.read_bytes())
    assert counts["collections"][2] >= 2


async def test_the_engine_benchmark_runs_whole_turns() -> None:
    from scripts.bench import engine

    figures = await engine.run(turns=200, calls=10)
    assert figures["completed"] == 200 + 20 * 10  # the measured turns and the warm-up, all completed
    assert 0 < figures["us_per_turn"] < 1_000_000
