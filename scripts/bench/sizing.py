"""The reference and sizing scenarios: callagent against the bare relay, CPU per turn by
concurrency, the most calls one core serves within a latency budget, and the console.

Every figure here is a *window*: a closed loop of N calls, a warm-up, then a fixed span in
which the target's own CPU time (``/proc/<pid>/stat``), its garbage collections (it runs under
``scripts.bench.gcwatch``) and the turns that ended are counted.

The machine is shared and noisy, so the callagent/relay ratio is taken per round, with the
relay and each callagent store measured back to back over the same transport, and the median
of the rounds' ratios is reported (and the medians of each side's CPU per turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import aiohttp

from .common import Mode, fmt, ms, progress, quantile
from .load import MakeCall, calls_for, run_calls, sse_calls
from .processes import Server

TRANSPORTS = ("sse", "ws", "openai")


async def window(
    make: MakeCall, target: Server, calls: int, seconds: float, warm: float, prefix: str
) -> dict[str, Any]:
    """``calls`` closed-loop calls; what ``target`` spent on the turns that ended in the window
    that opens ``warm`` seconds (plus one per thousand calls, as they start) after the load."""
    marks: dict[str, tuple[float, float, int | None]] = {}
    warm += min(1.0, calls / 1000)

    async def sample() -> None:
        for label, delay in (("start", warm), ("end", seconds)):
            await asyncio.sleep(delay)
            marks[label] = (time.monotonic(), target.cpu_seconds(), await target.gc_collections())

    sampler = asyncio.create_task(sample())
    until = time.monotonic() + warm + seconds
    load = await run_calls(make, calls, None, stagger=max(0.3, calls / 1000), prefix=prefix, until=until)
    await sampler
    (t0, c0, g0), (t1, c1, g1) = marks["start"], marks["end"]
    gcs = None if g0 is None or g1 is None else g1 - g0
    ended = [t for t in load.turns if t.ended is not None and t0 <= t.ended <= t1 and t.error is None]
    turns, events = len(ended), sum(t.events for t in ended)
    firsts = [t.first for t in ended if t.first is not None]
    return {
        "calls": calls,
        "seconds": round(t1 - t0, 2),
        "turns": turns,
        "turns_per_s": round(turns / (t1 - t0), 1),
        "events_per_turn": round(events / turns, 2) if turns else None,
        "cpu_us_per_turn": round((c1 - c0) / turns * 1e6, 1) if turns else None,
        "cpu_us_per_event": round((c1 - c0) / events * 1e6, 2) if events else None,
        "cores": round((c1 - c0) / (t1 - t0), 2),
        "gc_per_1000_turns": round(gcs * 1000 / turns, 1) if turns and gcs is not None else None,
        "first_text_p50_ms": ms(quantile(firsts, 0.5)),
        "errors": len(load.errors),
        "error_samples": sorted(set(load.errors))[:3],
    }


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


async def versus_relay(
    http: aiohttp.ClientSession, relay: Server, agents: dict[str, Server], mode: Mode
) -> list[dict[str, Any]]:
    """Per transport and store: callagent's and the relay's CPU per turn and per event, the ratio."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n in range(mode.ratio_rounds):
        for transport in TRANSPORTS:
            order = [("relay", relay), *agents.items()]
            # Every other round the other way round: a window's place in the sequence (right
            # after another process's load, or not) must not favour one side.
            for name, target in order if n % 2 == 0 else order[::-1]:
                make = calls_for(http, target.base, transport)
                row = await window(
                    make, target, mode.ratio_calls, mode.ratio_seconds, mode.ratio_warm, f"vs-{name}-{transport}"
                )
                samples.setdefault((transport, name), []).append(row)
                progress(
                    f"round {n + 1} {transport:6} {name:9} {mode.ratio_calls} calls: "
                    f"{fmt(row['cpu_us_per_turn'], 0)} us/turn, {fmt(row['gc_per_1000_turns'], 1)} gc/1000 turns, "
                    f"errors {row['errors']}"
                )
    rows = []
    for transport in TRANSPORTS:
        base = samples[(transport, "relay")]
        for store in agents:
            mine = samples[(transport, store)]
            ratios = [
                a["cpu_us_per_turn"] / r["cpu_us_per_turn"]
                for a, r in zip(mine, base, strict=True)
                if a["cpu_us_per_turn"] and r["cpu_us_per_turn"]
            ]
            rows.append(
                {
                    "transport": transport,
                    "store": store,
                    "calls": mode.ratio_calls,
                    "rounds": len(mine),
                    "callagent_us_per_turn": median([a["cpu_us_per_turn"] for a in mine]),
                    "relay_us_per_turn": median([r["cpu_us_per_turn"] for r in base]),
                    "callagent_us_per_event": median([a["cpu_us_per_event"] for a in mine]),
                    "relay_us_per_event": median([r["cpu_us_per_event"] for r in base]),
                    "ratio_per_turn": median(ratios),
                    "ratio_rounds": [round(x, 2) for x in ratios],
                    "callagent_gc_per_1000_turns": median([a["gc_per_1000_turns"] for a in mine]),
                    "relay_gc_per_1000_turns": median([r["gc_per_1000_turns"] for r in base]),
                    "callagent_turns_per_s": median([a["turns_per_s"] for a in mine]),
                    "relay_turns_per_s": median([r["turns_per_s"] for r in base]),
                    "errors": sum(a["errors"] for a in mine) + sum(r["errors"] for r in base),
                }
            )
    return rows


async def cpu_by_concurrency(http: aiohttp.ClientSession, agent: Server, mode: Mode) -> list[dict[str, Any]]:
    """CPU per turn (SSE, this callagent's store) at each of ``mode.sizing_calls``."""
    rows = []
    for calls in mode.sizing_calls:
        seconds = mode.ratio_seconds * (2 if calls <= 10 else 1)  # few turns at 10 calls: a longer window
        make = sse_calls(http, agent.base, direct=False)
        row = await window(make, agent, calls, seconds, mode.ratio_warm, f"size-{calls}")
        rows.append(row)
        progress(f"sizing {calls:5} calls: {fmt(row['cpu_us_per_turn'], 0)} us/turn, errors {row['errors']}")
    return rows


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (0: this process) onto ``cpus``."""
    for tid in os.listdir(f"/proc/{pid or os.getpid()}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def own_core(measured: list[Server], others: list[Server]) -> Iterator[bool]:
    """The ``measured`` servers on one CPU of their own (as a deployment gives callagent its
    cores), the ``others`` and this process (the load generator) on the rest: what is measured
    then does not depend on how the kernel shares two CPUs among three busy processes. Yields
    False, pinning nothing, on a machine with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield False
        return
    everything, core, rest = set(cpus), {cpus[-1]}, set(cpus[:-1])
    for server in measured:
        pin(server.pid, core)
    for server in others:
        pin(server.pid, rest)
    pin(0, rest)
    try:
        yield True
    finally:
        for server in (*measured, *others):
            if server.proc is not None and server.proc.poll() is None:
                pin(server.pid, everything)
        pin(0, everything)


async def calls_per_core(
    http: aiohttp.ClientSession, emu: Server, agent: Server, mode: Mode, budget_ms: float = 50.0
) -> dict[str, Any]:
    """The most concurrent SSE calls a callagent pinned to one core serves with added p99 first
    text (via callagent minus direct, same concurrency) under ``budget_ms``: doubling, then
    bisection, until ``mode.core_seconds`` are spent."""
    if len(os.sched_getaffinity(0)) < 2:
        return {"skipped": "needs two CPUs: one for callagent, one for the emulator and the load"}
    probes: list[dict[str, Any]] = []
    deadline = time.monotonic() + mode.core_seconds

    async def probe(calls: int) -> bool:
        stagger = max(0.3, calls / 1000)
        direct_calls, via_calls = sse_calls(http, emu.base, direct=True), sse_calls(http, agent.base, direct=False)
        direct = await run_calls(direct_calls, calls, mode.core_turns, stagger=stagger, prefix="core-d")
        via = await run_calls(via_calls, calls, mode.core_turns, stagger=stagger, prefix="core-v")
        added = quantile(via.firsts(), 0.99), quantile(direct.firsts(), 0.99)
        value = None if None in added else ms(added[0] - added[1])  # type: ignore[operator]
        ok = value is not None and value < budget_ms and not via.errors
        probes.append({"calls": calls, "added_p99_ms": value, "errors": len(via.errors), "ok": ok})
        progress(f"one core, {calls:5} calls: added p99 {fmt(value)} ms ({'within' if ok else 'over'} {budget_ms:g})")
        return ok

    with own_core([agent], [emu]):
        good, bad, calls = 0, None, mode.core_start
        while calls <= mode.core_max and time.monotonic() < deadline:
            if not await probe(calls):
                bad = calls
                break
            good, calls = calls, calls * 2
        while bad is not None and bad - good > max(10, good // 8) and time.monotonic() < deadline:
            middle = (good + bad) // 2
            if await probe(middle):
                good = middle
            else:
                bad = middle
    return {
        "budget_ms": budget_ms,
        "calls": good,
        "first_over": bad,
        "capped": bad is None,  # never went over: the figure is at least this
        "probes": probes,
    }


async def console(mode: Mode) -> dict[str, Any]:
    """``scripts/console_bench.py`` (CPU per turn with the console closed and watched), in a thread:
    it starts its own callagent and runs its own event loop."""
    from scripts import console_bench

    turns, rounds = (200, 1) if mode.name == "quick" else (1000, 2)
    figures: dict[str, Any] = await asyncio.to_thread(console_bench.run, turns=turns, rounds=rounds)
    closed, watched = figures["cpu_ms_per_turn_closed"], figures["cpu_ms_per_turn_watched"]
    progress(f"console: {closed} ms/turn closed, {watched} watched")
    return figures
