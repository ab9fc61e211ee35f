"""Benchmark: callagent between simulated gateways and the FastGPT emulator, on loopback.

The FastGPT emulator (``scripts/fastgpt_emulator.py``) and callagent (``python -m callagent
serve``) run as separate processes; this process is the load generator. Every latency figure
compares, in the same run, the same calls made directly to the emulator and through callagent:

- added time to first text: p50/p99 of the first ``text_delta`` through callagent minus
  p50/p99 of the first *speakable* ``answer`` chunk read directly (the chunk that completes
  the leading ``<state>`` tag and carries the first character after it; callagent's own tag
  parser decides, so both sides apply the same rule), at 1, 10, 100 (and 1000) calls;
- the same for the first clause (``?segment=clause``; directly, callagent's clause segmenter
  runs on the direct stream);
- turns per second at saturation, and the callagent process's CPU time (utime + stime from
  ``/proc/<pid>/stat``) per turn and per event it forwarded;
- resident memory (``VmRSS``) per idle WebSocket and per streaming turn;
- time from a WebSocket ``interrupt`` (and from an SSE client hanging up) to the emulator
  seeing its connection closed.

A *call* is one simulated phone call: one session, its turns back to back (closed loop, no
think time), each turn a whole streamed reply. "N calls" means N such calls at once; each
call's first turn (connection set-up) is a warm-up and is not counted.

Clocks: every timestamp is ``time.monotonic()`` (``CLOCK_MONOTONIC``). The emulator stamps
its stream logs with its event loop's ``loop.time()``, which on Linux is the same system-wide
clock, so "interrupt sent here" and "connection closed there" can be subtracted. The run
checks it: each upstream stream must start after its call was sent and before the call's
first text arrived, or the interrupt figures are flagged.

Modes: ``--quick`` (under a minute), the default (a few minutes; ``make bench``) and
``--full`` (adds 1000 concurrent calls and 5000 idle WebSockets). ``--json PATH`` writes every
figure. ``--loop asyncio`` runs callagent on the standard event loop instead of uvloop.
``--py-spy PATH`` records a flame graph of callagent during the saturation run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callagent.segment import ClauseSegmenter  # noqa: E402  (the direct side uses callagent's own rules)
from callagent.tags import StageTag, StateTagParser  # noqa: E402

HOST = "127.0.0.1"
API_KEY = "fastgpt-test"
APP_ID = "app1"
CHUNK_DELAY = 0.02  # seconds between upstream chunks, as a streaming LLM
CHUNK_CHARS = 4  # characters per upstream chunk: the <state> tag arrives cut in pieces
# A realistic first reply of the intake script: the stage tag first, then one question.
REPLY = "<state>1002</state>您好，这里是交通事故快处中心，请问现场有人受伤吗？"
# For holding turns open (memory per streaming turn): about 4 s at HOLD_CHUNK_DELAY.
HOLD_REPLY = "<state>1002</state>" + "请您保持通话，我们正在为您登记事故信息，稍后会有民警与您联系。" * 5
HOLD_CHUNK_DELAY = 0.1
CALLER_TEXT = "你好，我这里发生了交通事故"
CALL_TIMEOUT = 60.0  # no single call may take longer (a hung stream is an error)
READY_TIMEOUT = 30.0
JSON_HEADERS = {"Content-Type": "application/json"}


# -- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    latency_sse: tuple[tuple[int, int], ...]  # (calls, measured turns per call)
    latency_ws: tuple[tuple[int, int], ...]
    clause: tuple[tuple[int, int], ...]
    saturation_workers: tuple[int, ...]
    saturation_seconds: float
    sqlite_workers: tuple[int, ...]
    interrupts: int
    idle_sockets: int
    streaming_turns: int
    rounds: int = 2  # direct and via callagent alternate this many times per latency figure


MODES = {
    "quick": Mode(
        "quick",
        latency_sse=((1, 10), (10, 3), (100, 2)),
        latency_ws=((1, 8), (100, 2)),
        clause=((1, 5), (100, 1)),
        saturation_workers=(400,),
        saturation_seconds=3.0,
        sqlite_workers=(400,),
        interrupts=20,
        idle_sockets=500,
        streaming_turns=100,
        rounds=1,
    ),
    "default": Mode(
        "default",
        latency_sse=((1, 60), (10, 12), (100, 4)),
        latency_ws=((1, 40), (10, 8), (100, 4)),
        clause=((1, 30), (10, 6), (100, 2)),
        saturation_workers=(200, 400, 800),
        saturation_seconds=6.0,
        sqlite_workers=(400, 800),
        interrupts=100,
        idle_sockets=1000,
        streaming_turns=300,
    ),
    "full": Mode(
        "full",
        latency_sse=((1, 100), (10, 20), (100, 6), (1000, 3)),
        latency_ws=((1, 60), (10, 10), (100, 6), (1000, 3)),
        clause=((1, 40), (10, 8), (100, 3)),
        saturation_workers=(200, 400, 800, 1600),
        saturation_seconds=8.0,
        sqlite_workers=(400, 800),
        interrupts=200,
        idle_sockets=5000,
        streaming_turns=1000,
    ),
}
SCENARIOS = ("latency", "clause", "saturation", "interrupt", "memory")


# -- statistics -------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# -- processes --------------------------------------------------------------------------------


def host_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A child process serving HTTP on loopback; its CPU time and memory read from /proc."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def start(self, http: aiohttp.ClientSession, ready_path: str) -> None:
        """Spawn, then poll ``ready_path`` until the server answers (with a deadline)."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with http.get(self.base + ready_path, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)  # aiohttp's run_app shuts down cleanly on SIGINT
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if time.monotonic() - started > 2:
            progress(f"{self.name} took {time.monotonic() - started:.1f} s to stop")

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads)."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Lab:
    """The processes of a run: emulators and callagent instances, all stopped at the end."""

    def __init__(self, workdir: Path, loop: str) -> None:
        self.workdir = workdir
        self.loop = loop
        self.servers: list[Server] = []

    async def emulator(self, http: aiohttp.ClientSession, name: str, reply: str, chunk_delay: float) -> Server:
        port = free_port()
        argv = [
            sys.executable,
            str(ROOT / "scripts" / "fastgpt_emulator.py"),
            "--host",
            HOST,
            "--port",
            str(port),
            "--chunk-chars",
            str(CHUNK_CHARS),
            "--chunk-delay",
            str(chunk_delay),
            "--api-key",
            API_KEY,
            "--app-id",
            APP_ID,
            "--reply",
            reply,
        ]
        server = Server(name, argv, dict(os.environ), port, self.workdir)
        self.servers.append(server)
        await server.start(http, "/__emulator/healthz")  # any answer (here a 404) means it is up
        return server

    async def callagent(self, http: aiohttp.ClientSession, name: str, upstream: Server, store: str) -> Server:
        port = free_port()
        env = dict(os.environ) | {
            "CALLAGENT_UPSTREAM": "fastgpt",
            "FASTGPT_BASE_URL": upstream.base,
            "FASTGPT_API_KEY": API_KEY,
            "FASTGPT_APP_ID": APP_ID,
            "CALLAGENT_STORE": store,
            "CALLAGENT_LOG_LEVEL": "warning",
            "CALLAGENT_LOG_FORMAT": "json",
            "CALLAGENT_API_KEYS": "",
        }
        if self.loop == "asyncio":
            env["CALLAGENT_UVLOOP"] = "false"
        argv = [sys.executable, "-m", "callagent", "serve", "--host", HOST, "--port", str(port)]
        server = Server(name, argv, env, port, self.workdir)
        self.servers.append(server)
        await server.start(http, "/healthz")
        return server

    def retire(self, server: Server) -> None:
        server.stop()

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()


# -- one call ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Turn:
    """One turn as the load generator saw it. Times are seconds after the request was sent."""

    sent: float  # monotonic
    first: float | None = None  # first text (or first clause)
    ended: float | None = None  # monotonic, the stream or message exchange is over
    events: int = 0  # events forwarded by callagent (or speakable chunks read directly)
    error: str | None = None


async def sse_frames(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, bytes]]:
    """Every complete SSE frame of a response, with the time its bytes arrived."""
    pending = b""
    async for block in response.content.iter_any():
        now = time.monotonic()
        *frames, pending = (pending + block).split(b"\n\n")
        for frame in frames:
            yield now, frame


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
            async for now, frame in sse_frames(r):
                if not frame.startswith(b"event: "):
                    continue  # ": ping" comments
                turn.events += 1
                name = frame[7 : frame.index(b"\n")]
                if name == b"text_delta":
                    if turn.first is None:
                        turn.first = now - turn.sent
                elif name == b"done":
                    status = "completed" if b'"completed"' in frame else "cancelled"
                elif name == b"error":
                    status = "error: " + frame.split(b"data: ", 1)[-1][:200].decode(errors="replace")
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
            async for now, frame in sse_frames(r):
                if frame.startswith(b"event: workflowDuration"):
                    completed = True
                elif frame.startswith(b"event: error"):
                    turn.error = frame.decode(errors="replace")[:200]
                elif frame.startswith(b"event: answer\ndata: {"):
                    delta = orjson.loads(frame[20:])["choices"][0]["delta"]
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


# -- closed-loop load -------------------------------------------------------------------------

TurnFn = Callable[[], Awaitable[Turn]]
MakeCall = Callable[[str], tuple[TurnFn, Callable[[], Awaitable[None]]]]


@dataclass
class Load:
    """Turns made by ``calls`` concurrent calls (warm-up turns excluded)."""

    turns: list[Turn] = field(default_factory=list)
    warmup_errors: list[str] = field(default_factory=list)

    def add(self, other: Load) -> None:
        self.turns += other.turns
        self.warmup_errors += other.warmup_errors

    @property
    def errors(self) -> list[str]:
        return self.warmup_errors + [t.error for t in self.turns if t.error]

    def firsts(self) -> list[float]:
        return [t.first for t in self.turns if t.first is not None and t.error is None]


_call_ids = itertools.count()


def new_session(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_call_ids)}"


async def run_calls(
    make_call: MakeCall,
    calls: int,
    turns: int | None,
    *,
    stagger: float,
    prefix: str,
    until: float | None = None,
) -> Load:
    """``calls`` concurrent calls, each a warm-up turn then ``turns`` turns (or turns until
    ``until``), started ``stagger`` seconds apart in total."""
    load = Load()

    async def one_call(i: int) -> None:
        await asyncio.sleep(stagger * i / max(1, calls))
        turn_fn, close = make_call(new_session(prefix))
        try:
            warm = await turn_fn()
            if warm.error:
                load.warmup_errors.append(warm.error)
            n = 0
            while (turns is not None and n < turns) or (until is not None and time.monotonic() < until):
                load.turns.append(await turn_fn())
                n += 1
        finally:
            await close()

    await asyncio.gather(*(one_call(i) for i in range(calls)))
    return load


async def alternate(direct_calls: MakeCall, via_calls: MakeCall, turns: int, prefix: str) -> tuple[Load, Load]:
    """One call direct and one through callagent, turn for turn, so each pair meets the same machine."""
    direct_turn, close_direct = direct_calls(new_session("direct-" + prefix))
    via_turn, close_via = via_calls(new_session(prefix))
    direct, via = Load(), Load()
    try:
        for load, turn_fn in ((direct, direct_turn), (via, via_turn)):
            warm = await turn_fn()
            if warm.error:
                load.warmup_errors.append(warm.error)
        for _ in range(turns):
            direct.turns.append(await direct_turn())
            via.turns.append(await via_turn())
    finally:
        await close_direct()
        await close_via()
    return direct, via


async def _nothing() -> None:
    return None


def sse_calls(http: aiohttp.ClientSession, base: str, *, direct: bool, clause: bool = False) -> MakeCall:
    fn = sse_direct if direct else sse_via

    def make(session_id: str) -> tuple[TurnFn, Callable[[], Awaitable[None]]]:
        return (lambda: fn(http, base, session_id, clause)), _nothing

    return make


def ws_calls(http: aiohttp.ClientSession, base: str) -> MakeCall:
    def make(session_id: str) -> tuple[TurnFn, Callable[[], Awaitable[None]]]:
        call = WsCall(http, base, session_id)
        return call.turn, call.close

    return make


# -- scenarios --------------------------------------------------------------------------------


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


# -- the run ----------------------------------------------------------------------------------


def progress(line: str) -> None:
    print(f"  .. {line}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
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
    db = lab.workdir / "callagent.db"
    sqlite_agent = await lab.callagent(http, "callagent-sqlite", emu, f"sqlite:///{db}")
    try:
        await warm_up(http, sqlite_agent)
        for workers in mode.sqlite_workers:
            await one(sqlite_agent, workers, "sse", "sqlite")
    finally:
        lab.retire(sqlite_agent)
    return rows


# -- the report -------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    up = results["upstream"]
    out = [
        f"callagent benchmark ({results['mode']} mode): {m['cpus']} CPUs shared by the emulator, callagent and the "
        "load generator, loopback only",
        f"callagent {results['callagent_code']} on {results['callagent_loop']}; load generator on "
        f"{results['loadgen_loop']}; Python {m['python']}, aiohttp {m['aiohttp']}; "
        f"load average before the run {results['load_before']:.2f}",
        f"upstream: FastGPT emulator, {up['chunk_chars']} characters every {up['chunk_delay_ms']:g} ms, "
        f"reply {up['reply']!r}",
        "calls are closed loops (turns back to back, no think time); added = via callagent - direct, per quantile",
        "",
    ]
    for key, title in (
        ("first_text", "Time to first text (ms): first text_delta via callagent vs first speakable chunk direct"),
        ("first_clause", "Time to first clause (ms), ?segment=clause: via callagent vs the same segmenter direct"),
    ):
        if key not in results:
            continue
        out.append(title)
        rows = [
            [
                r["transport"],
                str(r["calls"]),
                str(r["turns"]),
                fmt(r["direct_p50_ms"]),
                fmt(r["direct_p99_ms"]),
                fmt(r["via_p50_ms"]),
                fmt(r["via_p99_ms"]),
                fmt(r["added_p50_ms"]),
                fmt(r["added_p99_ms"]),
                str(r["errors"]),
            ]
            for r in results[key]
        ]
        headers = ["via", "calls", "turns", "direct p50", "p99", "callagent p50", "p99", "added p50", "added p99"]
        out += [table([*headers, "errors"], rows), ""]
    if "saturation" in results:
        out.append("Saturation (closed loop; CPU of the callagent process only: utime+stime from /proc)")
        rows = [
            [
                r["target"],
                r["transport"],
                r["store"],
                str(r["workers"]),
                fmt(r["turns_per_s"], 1),
                fmt(r["first_text_p50_ms"], 1),
                fmt(r["cpu_us_per_turn"], 0),
                fmt(r["cpu_us_per_event"], 1),
                fmt(r["events_per_turn"], 1),
                fmt(r["callagent_cores"]),
                fmt(r["emulator_cores"]),
                fmt(r["loadgen_cores"]),
                fmt(r["other_cores"]),
                str(r["errors"]),
            ]
            for r in results["saturation"]
        ]
        headers = ["target", "via", "store", "calls", "turns/s", "1st text p50", "us/turn", "us/event", "events/turn"]
        out += [table([*headers, "cores: callagent", "emulator", "loadgen", "other", "errors"], rows), ""]
    if "interrupt" in results:
        out.append("Barge-in to upstream connection closed (ms; the emulator's clock, same CLOCK_MONOTONIC)")
        rows = [
            [
                r["how"],
                str(r["samples"]),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["max_ms"]),
                fmt(r.get("ack_p50_ms")),
                str(r["finished_before_barge_in"]),
                str(r["upstream_not_closed"]),
                str(r["clock_check_failures"]),
                str(r["errors"]),
            ]
            for r in results["interrupt"]
        ]
        headers = ["barge-in", "n", "p50", "p99", "max", "ack p50", "too late", "not closed", "clock bad", "errors"]
        out += [table(headers, rows), ""]
    if "memory" in results:
        idle, hold = results["memory"]["idle_websocket"], results["memory"]["streaming_turn"]
        out += [
            "Resident memory of callagent (VmRSS, fresh process each)",
            f"  idle WebSocket (bound with `start`): {fmt(idle['kib_per_socket'])} KiB each "
            f"({idle['sockets']} sockets, {idle['rss_before_kib']} -> {idle['rss_with_sockets_kib']} KiB, "
            f"{idle['failures']} failed)",
            f"  streaming SSE turn (with its upstream stream): {fmt(hold['kib_per_turn'])} KiB each "
            f"({hold['turns_at_once']} at once, {hold['rss_before_kib']} -> {hold['rss_at_peak_kib']} KiB, "
            f"{hold['failures']} failed)",
            "",
        ]
    busy = max((r["other_cores"] for r in results.get("saturation", ())), default=0.0)
    if busy > 0.25:
        out += [f"note: other processes used up to {busy:.2f} cores during the saturation runs: noisy figures", ""]
    checks = results.get("targets", [])
    if checks:
        out.append("Targets (reported, not enforced)")
        width = max(len(c["what"]) for c in checks)
        for c in checks:
            verdict = "-" if c["met"] is None else ("met" if c["met"] else "NOT met")
            value = str(c["value"]) if isinstance(c["value"], int) else fmt(c["value"])
            out.append(f"  {c['what'].ljust(width)}  {value} (target {c['target']})  {verdict}")
        out.append("")
    return "\n".join(out)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the run lands against the issue's targets."""
    checks: list[dict[str, Any]] = []

    def check(what: str, value: float | None, target: str, met: bool | None) -> None:
        checks.append({"what": what, "value": value, "target": target, "met": met})

    for row in results.get("first_text", ()):
        limit = {1: 0.5, 10: 2.0, 100: 10.0}.get(row["calls"])
        if row["transport"] == "sse" and limit is not None:
            value = row["added_p50_ms"]
            met = None if value is None else value <= limit
            check(f"added first text p50, {row['calls']} SSE calls (ms)", value, f"<= {limit:g}", met)
        if row["calls"] >= 1000:
            what = f"errors, {row['calls']} concurrent {row['transport'].upper()} calls"
            check(what, row["errors"], "0", row["errors"] == 0)
    for transport in ("sse", "ws"):
        rows = [
            r["turns_per_s"]
            for r in results.get("saturation", ())
            if r["target"] == "callagent" and r["store"] == "memory" and r["transport"] == transport
        ]
        if rows:
            what = f"saturated throughput, {transport.upper()}, memory store (turns/s)"
            check(what, max(rows), ">= 900", max(rows) >= 900)
    if "memory" in results:
        per = results["memory"]["idle_websocket"]["kib_per_socket"]
        check("memory per idle WebSocket (KiB)", per, "<= 30", None if per is None else per <= 30)
    for row in results.get("interrupt", ()):
        if row["how"] == "ws interrupt":
            p99 = row["p99_ms"]
            check("interrupt to upstream closed p99 (ms)", p99, "<= 20", None if p99 is None else p99 <= 20)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark callagent against the FastGPT emulator on loopback.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick", help="small counts, < 1 minute")
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="1000 calls, 5000 sockets")
    parser.set_defaults(mode="default")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--only", metavar="LIST", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--loop", choices=("default", "asyncio"), default="default", help="callagent's event loop")
    parser.add_argument("--py-spy", metavar="PATH", help="record callagent under saturation (.svg, or .txt raw)")
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(SCENARIOS):
        parser.error(f"--only: choose from {', '.join(SCENARIOS)}")

    started = time.monotonic()
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(run(args))
    else:
        results = uvloop.run(run(args))
    results["targets"] = targets(results)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    print(report(results))
    print(f"({results['wall_seconds']} s)")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
