"""The scenarios: latency, clause latency, saturation, interrupt, memory."""

from __future__ import annotations

import asyncio
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .calls import WsCall
from .common import CALL_TIMEOUT, CALLER_TEXT, JSON_HEADERS, Mode, diff, fmt, ms, progress, quantile
from .load import Load, alternate, new_session, run_calls, sse_calls, ws_calls
from .processes import Server, host_busy_seconds
from .sizing import own_core


def first_text_row(transport: str, calls: int, direct: Load, via: Load) -> dict[str, Any]:
    d, v = direct.firsts(), via.firsts()
    d50, d99, v50, v99 = quantile(d, 0.5), quantile(d, 0.99), quantile(v, 0.5), quantile(v, 0.99)
    return {
        "transport": transport,
        "calls": calls,
        "turns": len(via.turns),
        "direct_p50_ms": ms(d50),
        "direct_p99_ms": ms(d99),
        "via_p50_ms": ms(v50),
        "via_p99_ms": ms(v99),
        "added_p50_ms": ms(diff(v50, d50)),
        "added_p99_ms": ms(diff(v99, d99)),
        "errors": len(via.errors),
        "direct_errors": len(direct.errors),
        "error_samples": sorted(set(via.errors + direct.errors))[:5],
    }


def stagger_for(calls: int) -> float:
    # Calls do not all start at the same instant: spread their first requests over about one
    # turn, and over a second for a thousand of them.
    return 0.0 if calls == 1 else max(0.3, calls / 1000)


async def latency(
    http: aiohttp.ClientSession, emu: Server, agent: Server, mode: Mode, clause: bool
) -> list[dict[str, Any]]:
    """Added time to first text (or first clause), twice: with the machine's CPUs shared by the
    emulator, callagent and the load generator (``cpus: shared``), then with callagent on a CPU
    of its own and the other two on the rest (``cpus: own``), the direct calls as those through
    callagent."""
    rows = [row | {"cpus": "shared"} for row in await _latency(http, emu, agent, mode, clause)]
    with own_core([agent], [emu]) as pinned:
        if pinned:
            rows += [row | {"cpus": "own"} for row in await _latency(http, emu, agent, mode, clause)]
    return rows


async def _latency(
    http: aiohttp.ClientSession, emu: Server, agent: Server, mode: Mode, clause: bool
) -> list[dict[str, Any]]:
    rows = []
    plan = [("sse", c, t) for c, t in (mode.clause if clause else mode.latency_sse)]
    if not clause:
        plan += [("ws", c, t) for c, t in mode.latency_ws]
    kind = "clause" if clause else "text"
    for transport, calls, turns in plan:
        direct_calls = sse_calls(http, emu.base, direct=True, clause=clause)
        via_calls = (
            ws_calls(http, agent.base)
            if transport == "ws"
            else sse_calls(http, agent.base, direct=False, clause=clause)
        )
        if calls == 1:
            direct, via = await alternate(direct_calls, via_calls, turns, f"{transport}-{kind}-1")
        else:
            # Direct and via callagent take turns, so that a slow spell of the machine hits both.
            direct, via = Load(), Load()
            per_round = max(1, turns // mode.rounds)
            for _ in range(mode.rounds):
                stagger = stagger_for(calls)
                direct.add(await run_calls(direct_calls, calls, per_round, stagger=stagger, prefix=f"direct-{kind}"))
                via.add(await run_calls(via_calls, calls, per_round, stagger=stagger, prefix=f"{transport}-{kind}"))
        row = first_text_row(transport, calls, direct, via)
        rows.append(row)
        progress(
            f"first {kind:6} {transport:3} {calls:5} calls: added p50 {fmt(row['added_p50_ms'])} ms, "
            f"p99 {fmt(row['added_p99_ms'])} ms, errors {row['errors']}"
        )
        await reset_emulator(http, emu)
    return rows


async def saturation(
    http: aiohttp.ClientSession,
    emu: Server,
    agent: Server | None,
    workers: int,
    seconds: float,
    transport: str,
    py_spy: str | None = None,
) -> dict[str, Any]:
    """Closed loop with ``workers`` calls for ``seconds``; counts what ends in the window."""
    if agent is None:
        make = sse_calls(http, emu.base, direct=True)
    elif transport == "ws":
        make = ws_calls(http, agent.base)
    else:
        make = sse_calls(http, agent.base, direct=False)
    warm = 1.5
    start = time.monotonic()
    window = (start + warm, start + warm + seconds)
    samples: dict[str, tuple[float, float, float, float, float]] = {}

    async def sample_cpu() -> None:
        for label, at in (("start", window[0]), ("end", window[1])):
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            agent_cpu = agent.cpu_seconds() if agent else 0.0
            usage = resource.getrusage(resource.RUSAGE_SELF)
            own = usage.ru_utime + usage.ru_stime
            samples[label] = (time.monotonic(), agent_cpu, emu.cpu_seconds(), own, host_busy_seconds())

    spy = None
    if py_spy and agent is not None:
        spy = start_py_spy(agent, py_spy, warm, seconds)
    sampler = asyncio.create_task(sample_cpu())
    load = await run_calls(make, workers, None, stagger=0.3, prefix=f"sat-{transport}-{workers}", until=window[1])
    await sampler
    if spy is not None:
        spy.wait(timeout=60)
    t0, a0, e0, b0, h0 = samples["start"]
    t1, a1, e1, b1, h1 = samples["end"]
    in_window = [t for t in load.turns if t.ended is not None and t0 <= t.ended <= t1]
    span = t1 - t0
    turns = len(in_window)
    events = sum(t.events for t in in_window)
    return {
        "target": "direct" if agent is None else "callagent",
        "transport": "sse" if agent is None else transport,
        "workers": workers,
        "seconds": round(span, 3),
        "turns_per_s": round(turns / span, 1),
        "events_per_turn": round(events / turns, 2) if turns else None,
        "cpu_us_per_turn": round((a1 - a0) / turns * 1e6, 1) if turns and agent else None,
        "cpu_us_per_event": round((a1 - a0) / events * 1e6, 1) if events and agent else None,
        "callagent_cores": round((a1 - a0) / span, 2) if agent else None,
        "emulator_cores": round((e1 - e0) / span, 2),
        "loadgen_cores": round((b1 - b0) / span, 2),
        # Whatever else ran on the machine meanwhile (kernel threads, other users): noise.
        "other_cores": round(((h1 - h0) - (a1 - a0) - (e1 - e0) - (b1 - b0)) / span, 2),
        "first_text_p50_ms": ms(quantile([t.first for t in in_window if t.first is not None], 0.5)),
        "errors": len(load.errors),
        "error_samples": sorted(set(load.errors))[:5],
    }


def start_py_spy(agent: Server, out: str, delay: float, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        progress("py-spy not found: no profile (pip install py-spy)")
        return None
    duration = str(round(delay + seconds))
    argv = [exe, "record", "--pid", str(agent.pid), "--duration", duration, "--rate", "250", "-o", out]
    if out.endswith(".txt"):
        argv += ["--format", "raw"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def interrupt(http: aiohttp.ClientSession, emu: Server, agent: Server, count: int) -> list[dict[str, Any]]:
    """Barge in mid-reply; time until the emulator sees the upstream connection closed."""
    await reset_emulator(http, emu)
    parallel = 10
    ws_marks: list[tuple[str, float, float, float]] = []  # session, sent, first text, barge-in
    sse_marks: list[tuple[str, float, float, float]] = []
    ack_ms: list[float] = []
    errors: list[str] = []

    async def ws_barge_in(n: int) -> None:
        try:
            ws = await http.ws_connect(agent.base + "/ws", autoping=True)
        except (aiohttp.ClientError, ConnectionError) as e:
            errors.append(f"ws: {type(e).__name__}: {e}")
            return
        try:
            for _ in range(n):
                session_id = new_session("barge-ws")
                try:
                    async with asyncio.timeout(CALL_TIMEOUT):
                        sent = time.monotonic()
                        await ws.send_str(
                            orjson.dumps({"type": "chat", "sessionId": session_id, "text": CALLER_TEXT}).decode()
                        )
                        while True:  # bounded by the timeout
                            msg = orjson.loads((await ws.receive()).data)
                            if msg["type"] == "text_delta":
                                break
                        first = time.monotonic()
                        await asyncio.sleep(random.uniform(0, 0.04))
                        at = time.monotonic()
                        await ws.send_str(orjson.dumps({"type": "interrupt", "sessionId": session_id}).decode())
                        while True:  # bounded by the timeout
                            msg = orjson.loads((await ws.receive()).data)
                            if msg["type"] == "ack" and msg.get("for") == "interrupt":
                                break
                        ack_ms.append((time.monotonic() - at) * 1000)
                        ws_marks.append((session_id, sent, first, at))
                except (aiohttp.ClientError, TimeoutError, ConnectionError, TypeError, KeyError) as e:
                    errors.append(f"ws: {type(e).__name__}: {e}")
        finally:
            await ws.close()

    async def sse_hang_up(n: int) -> None:
        for _ in range(n):
            session_id = new_session("barge-sse")
            body = orjson.dumps({"sessionId": session_id, "timeStamp": "0", "text": CALLER_TEXT})
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    sent = time.monotonic()
                    r = await http.post(agent.base + "/chat?stream=true", data=body, headers=JSON_HEADERS)
                    try:
                        seen = b""
                        async for block in r.content.iter_any():
                            seen += block
                            if b"event: text_delta" in seen:
                                break
                        first = time.monotonic()
                        await asyncio.sleep(random.uniform(0, 0.04))
                        at = time.monotonic()
                    finally:
                        r.close()  # the gateway hangs up: the connection is closed
                    sse_marks.append((session_id, sent, first, at))
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
                errors.append(f"sse: {type(e).__name__}: {e}")

    per = max(1, count // parallel)
    await asyncio.gather(*(ws_barge_in(per) for _ in range(parallel)))
    await asyncio.gather(*(sse_hang_up(per) for _ in range(parallel)))

    # Wait (bounded) for the emulator to log every stream as ended, then read the logs.
    streams: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        async with http.get(emu.base + "/__emulator/streams") as r:
            logs = await r.json(loads=orjson.loads)
        streams = {log["chat_id"]: log for log in logs}
        if all(log["closed"] for log in logs):
            break
        await asyncio.sleep(0.1)

    rows = []
    for name, marks in (("ws interrupt", ws_marks), ("sse hang-up", sse_marks)):
        closes, late, not_closed, clock_bad = [], 0, 0, 0
        for session_id, sent, first, at in marks:
            log = streams.get(session_id)
            if log is None:
                not_closed += 1
                continue
            if not sent <= log["started"] <= first:
                clock_bad += 1
            if log["disconnected_at"] is None:
                if log["outcome"] == "completed":
                    late += 1  # the reply was complete before the barge-in arrived
                else:
                    not_closed += 1
                continue
            closes.append(log["disconnected_at"] - at)
        row: dict[str, Any] = {
            "how": name,
            "samples": len(closes),
            "p50_ms": ms(quantile(closes, 0.5)),
            "p99_ms": ms(quantile(closes, 0.99)),
            "max_ms": ms(max(closes)) if closes else None,
            "finished_before_barge_in": late,
            "upstream_not_closed": not_closed,
            "clock_check_failures": clock_bad,
            "errors": len([e for e in errors if e.startswith(name.split()[0])]),
        }
        if name == "ws interrupt":
            row["ack_p50_ms"] = round(quantile(ack_ms, 0.5) or 0, 3)
            row["ack_p99_ms"] = round(quantile(ack_ms, 0.99) or 0, 3)
        rows.append(row)
        progress(f"{name}: upstream closed p50 {fmt(row['p50_ms'])} ms, p99 {fmt(row['p99_ms'])} ms")
    return rows


async def idle_sockets(http: aiohttp.ClientSession, agent: Server, count: int) -> dict[str, Any]:
    """RSS growth of a fresh callagent holding ``count`` bound, idle gateway sockets."""
    await warm_up(http, agent, whole_turns=False)
    base = agent.rss_kib()
    calls = [WsCall(http, agent.base, new_session("idle")) for _ in range(count)]
    gate = asyncio.Semaphore(100)
    failures = 0

    async def open_one(call: WsCall) -> None:
        nonlocal failures
        async with gate:
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    await call.open()
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                failures += 1

    try:
        await asyncio.gather(*(open_one(c) for c in calls))
        await asyncio.sleep(1.0)  # let the server settle (nothing is waited for: a fixed pause)
        held = agent.rss_kib()
    finally:
        await asyncio.gather(*(c.close() for c in calls))
    opened = count - failures
    per = (held - base) / opened if opened else None
    progress(f"idle sockets: {opened} open, {fmt(per)} KiB each")
    return {
        "sockets": opened,
        "failures": failures,
        "rss_before_kib": base,
        "rss_with_sockets_kib": held,
        "kib_per_socket": round(per, 2) if per is not None else None,
    }


async def streaming_turns(http: aiohttp.ClientSession, agent: Server, count: int) -> dict[str, Any]:
    """Peak RSS growth while ``count`` long SSE turns stream at once (fresh callagent)."""
    await warm_up(http, agent, whole_turns=False)
    base = agent.rss_kib()
    streaming = 0
    best = (0, base)  # (streaming turns, RSS) at the sample with the most turns streaming
    done = asyncio.Event()
    failures: list[str] = []

    async def one(i: int) -> None:
        nonlocal streaming
        await asyncio.sleep(0.5 * i / count)
        body = orjson.dumps({"sessionId": new_session("hold"), "timeStamp": "0", "text": CALLER_TEXT})
        counted = False
        try:
            async with (
                asyncio.timeout(CALL_TIMEOUT),
                http.post(agent.base + "/chat?stream=true", data=body, headers=JSON_HEADERS) as r,
            ):
                seen = b""
                async for block in r.content.iter_any():
                    if not counted:
                        seen += block
                        if b"event: text_delta" in seen:
                            counted = True
                            streaming += 1
                            seen = b""
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
            failures.append(f"{type(e).__name__}: {e}")
        finally:
            if counted:
                streaming -= 1

    async def sample() -> None:
        nonlocal best
        while not done.is_set():  # ends with the load
            if streaming >= best[0]:
                best = (streaming, agent.rss_kib())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        done.set()
        await sampler
    turns, rss = best
    per = (rss - base) / turns if turns else None
    progress(f"streaming turns: {turns} at once, {fmt(per)} KiB each")
    return {
        "turns_at_once": turns,
        "requested": count,
        "failures": len(failures),
        "rss_before_kib": base,
        "rss_at_peak_kib": rss,
        "kib_per_turn": round(per, 2) if per is not None else None,
    }


async def warm_up(http: aiohttp.ClientSession, agent: Server, *, whole_turns: bool = True) -> None:
    """A few turns over SSE and WebSocket, so that lazily built state and pools exist before a
    baseline is taken. With ``whole_turns`` false, each is barged in on at its first text."""
    if whole_turns:
        await run_calls(sse_calls(http, agent.base, direct=False), 10, 1, stagger=0, prefix="warm")
        await run_calls(ws_calls(http, agent.base), 10, 1, stagger=0, prefix="warm-ws")
        return

    async def first_text_then_interrupt() -> None:
        call = WsCall(http, agent.base, new_session("warm-ws"))
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await call.open()
                assert call.ws is not None
                await call.ws.send_str(orjson.dumps({"type": "chat", "text": CALLER_TEXT}).decode())
                await call.expect("text_delta")
                await call.ws.send_str(orjson.dumps({"type": "interrupt"}).decode())
                await call.expect("ack")
        finally:
            await call.close()

    await asyncio.gather(*(first_text_then_interrupt() for _ in range(10)))


async def reset_emulator(http: aiohttp.ClientSession, emu: Server) -> None:
    """Forget stream logs, requests and chats, so the emulator does not grow across scenarios."""
    async with http.post(emu.base + "/__emulator/reset") as r:
        r.raise_for_status()
