"""One benchmark run: start the processes, run the chosen scenarios, gather every figure."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from .common import (
    BASELINE,
    CHUNK_CHARS,
    CHUNK_DELAY,
    DEFAULT_OFF,
    HOLD_CHUNK_DELAY,
    HOLD_REPLY,
    MODES,
    REPLY,
    ROOT,
    SCENARIOS,
    Mode,
    fmt,
    progress,
)
from .processes import Lab, Server
from .scenarios import idle_sockets, interrupt, latency, reset_emulator, saturation, streaming_turns, warm_up
from .sizing import calls_per_core, console, cpu_by_concurrency, own_core, versus_relay


@contextlib.contextmanager
def timed(results: dict[str, Any], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        results.setdefault("scenario_seconds", {})[name] = round(time.monotonic() - started, 1)


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the servers
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def git_state() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def loop_name(choice: str) -> str:
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio (uvloop not installed)"
    return "uvloop"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = MODES[args.mode]
    only = set(args.only.split(",")) if args.only else set(SCENARIOS) - (set() if mode.name == "full" else DEFAULT_OFF)
    fd_limit = raise_fd_limit(3 * mode.idle_sockets + 4096)
    results: dict[str, Any] = {
        "mode": mode.name,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "fd_limit": fd_limit,
            "shared": "emulator, callagent and the load generator share the CPUs",
        },
        "callagent_code": git_state(),
        "load_before": os.getloadavg()[0],
        "callagent_loop": loop_name(args.loop),
        "loadgen_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "upstream": {"chunk_chars": CHUNK_CHARS, "chunk_delay_ms": CHUNK_DELAY * 1000, "reply": REPLY},
    }
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    with tempfile.TemporaryDirectory(prefix="callagent-bench-") as tmp:
        workdir = Path(tmp)
        lab = Lab(workdir, args.loop)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                emu = await lab.emulator(http, "emulator", REPLY, CHUNK_DELAY)
                agent = await lab.callagent(http, "callagent", emu, "memory://")
                await warm_up(http, agent)
                await reset_emulator(http, emu)
                if "latency" in only:
                    with timed(results, "latency"):
                        results["first_text"] = await latency(http, emu, agent, mode, clause=False)
                if "clause" in only:
                    with timed(results, "clause"):
                        results["first_clause"] = await latency(http, emu, agent, mode, clause=True)
                if "saturation" in only:
                    with timed(results, "saturation"):
                        results["saturation"] = await saturation_runs(http, lab, emu, agent, mode, args.py_spy)
                if only & {"relay", "sizing", "core"}:
                    # A fresh process: the one above has served every earlier scenario, and a
                    # store that keeps every transcript in memory makes later turns dearer.
                    fresh = await lab.callagent(http, "callagent-fresh", emu, "memory://")
                    await warm_up(http, fresh)
                    if "relay" in only:
                        with timed(results, "relay"):
                            results["versus_relay"] = await relay_runs(http, lab, emu, fresh, mode, args.baseline)
                    if "sizing" in only:
                        with timed(results, "sizing"):
                            results["cpu_by_calls"] = await cpu_by_concurrency(http, fresh, mode)
                            await reset_emulator(http, emu)
                    if "core" in only:
                        with timed(results, "core"):
                            results["one_core"] = await calls_per_core(http, emu, fresh, mode)
                            await reset_emulator(http, emu)
                    lab.retire(fresh)
                if "interrupt" in only:
                    with timed(results, "interrupt"):
                        results["interrupt"] = await interrupt(http, emu, agent, mode.interrupts)
                lab.retire(agent)
                if "memory" in only:
                    with timed(results, "memory"):
                        hold = await lab.emulator(http, "emulator-hold", HOLD_REPLY, HOLD_CHUNK_DELAY)
                        fresh = await lab.callagent(http, "callagent-idle", hold, "memory://")
                        idle = await idle_sockets(http, fresh, mode.idle_sockets)
                        lab.retire(fresh)
                        fresh = await lab.callagent(http, "callagent-hold", hold, "memory://")
                        streaming = await streaming_turns(http, fresh, mode.streaming_turns)
                        lab.retire(fresh)
                        results["memory"] = {"idle_websocket": idle, "streaming_turn": streaming}
                if "console" in only:
                    with timed(results, "console"):
                        results["console"] = await console(mode)
        finally:
            lab.stop_all()
    return results


async def saturation_runs(
    http: aiohttp.ClientSession, lab: Lab, emu: Server, agent: Server, mode: Mode, py_spy: str | None
) -> list[dict[str, Any]]:
    rows = []

    async def one(target: Server | None, workers: int, transport: str, store: str, spy: str | None = None) -> None:
        row = await saturation(http, emu, target, workers, mode.saturation_seconds, transport, spy)
        row["store"] = store if target is not None else "-"
        rows.append(row)
        await reset_emulator(http, emu)
        progress(
            f"saturation {row['target']:9} {row['transport']:3} {store:7} {workers:4} calls: "
            f"{row['turns_per_s']} turns/s, {fmt(row['cpu_us_per_turn'], 0)} us/turn, errors {row['errors']}"
        )

    for workers in mode.saturation_workers:
        await one(None, workers, "sse", "-")
    best = None
    for workers in mode.saturation_workers:
        await one(agent, workers, "sse", "memory")
        if best is None or rows[-1]["turns_per_s"] > best[1]:
            best = (workers, rows[-1]["turns_per_s"])
    assert best is not None
    await one(agent, best[0], "ws", "memory")
    if py_spy:
        await one(agent, best[0], "sse", "memory", py_spy)
        rows[-1]["target"] = "profiled"  # py-spy slows the process: not a throughput figure
    if not mode.sqlite_workers:
        return rows
    db = lab.workdir / "callagent.db"
    sqlite_agent = await lab.callagent(http, "callagent-sqlite", emu, f"sqlite:///{db}")
    try:
        await warm_up(http, sqlite_agent)
        for workers in mode.sqlite_workers:
            await one(sqlite_agent, workers, "sse", "sqlite")
    finally:
        lab.retire(sqlite_agent)
    return rows


async def relay_runs(
    http: aiohttp.ClientSession, lab: Lab, emu: Server, agent: Server, mode: Mode, baseline: Path | None = None
) -> list[dict[str, Any]]:
    """The bare relay and callagent (memory and SQLite stores, and the ``baseline`` checkout's
    callagent with the memory store) over the same emulator and load."""
    relay = await lab.relay(http, "relay", emu)
    agents = {"memory": agent}
    try:
        if baseline is not None:
            agents[BASELINE] = await lab.callagent(http, "callagent-baseline", emu, "memory://", source=baseline)
            await warm_up(http, agents[BASELINE])
        if mode.ratio_sqlite:
            db = lab.workdir / "versus-relay.db"
            agents["sqlite"] = await lab.callagent(http, "callagent-sqlite-vs", emu, f"sqlite:///{db}")
            await warm_up(http, agents["sqlite"])
        with own_core([relay, *agents.values()], [emu]):
            return await versus_relay(http, relay, agents, mode)
    finally:
        for server in (relay, *agents.values()):
            if server is not agent:
                lab.retire(server)
        await reset_emulator(http, emu)
