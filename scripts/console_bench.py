"""Benchmark: what the operator console costs a turn, with nobody watching and with ten pages open.

The FastGPT emulator and callagent run as separate processes; this process places calls
(SSE ``/chat?stream=true``, ``--concurrency`` calls back to back) and, in the "watched" phases,
holds ``--viewers`` console feeds open and reads every message they get. The figure is the
callagent process's CPU time (utime + stime from ``/proc/<pid>/stat``) per turn. Phases
alternate (closed, watched, closed, watched, ...) ``--rounds`` times so machine noise hits both
alike; the median of each is reported, with what the viewers received (every text piece of
every turn should reach every viewer) and how much later than the gateway a viewer learnt
that a turn ended (``feed_lag_ms``: p50, p99, max).

    python -m scripts.console_bench                     # in-process feed (memory store)
    python -m scripts.console_bench --store redis://127.0.0.1:6379/0   # the feed through Redis
    python -m scripts.console_bench --json console.json

``run(...)`` returns the figures as a dict, for a caller that runs it among other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from callagent.sse import read_events  # noqa: E402

REPLY = "<state>1002</state>" + "您好，这里是交通事故快处服务。请问您现在方便通话吗？" * 2
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def wait_http(port: int, path: str, process: subprocess.Popen[bytes], deadline: float = 15.0) -> None:
    import http.client

    give_up = time.monotonic() + deadline
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if process.poll() is not None or time.monotonic() > give_up:
            raise RuntimeError(f"nothing answered GET {path} on port {port}")
        time.sleep(0.05)


@contextlib.contextmanager
def processes(store: str, log_dir: Path, app_root: Path = ROOT) -> Iterator[tuple[int, int]]:
    """The emulator and callagent; yields (callagent port, callagent pid)."""
    emulator_port, port = free_port(), free_port()
    started: list[subprocess.Popen[bytes]] = []
    try:
        emulator = [sys.executable, "-m", "scripts.emulators.fastgpt", "--port", str(emulator_port)]
        emulator += ["--reply", REPLY, "--heartbeat", "60"]
        with (log_dir / "emulator.log").open("wb") as log:
            started.append(subprocess.Popen(emulator, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        wait_http(emulator_port, "/__emulator/streams", started[-1])
        env = os.environ | {
            "CALLAGENT_STORE": store,
            "CALLAGENT_UPSTREAM": "fastgpt",
            "FASTGPT_BASE_URL": f"http://127.0.0.1:{emulator_port}",
            "FASTGPT_API_KEY": "fastgpt-test",
            "FASTGPT_APP_ID": "app1",
            "CALLAGENT_LOG_LEVEL": "warning",
            "CALLAGENT_LOG_FORMAT": "json",
            "PYTHONPATH": str(app_root),
        }
        args = [sys.executable, "-m", "callagent", "serve", "--port", str(port), "--env-file", ""]
        with (log_dir / "callagent.log").open("wb") as log:
            started.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_dir))
        wait_http(port, "/readyz", started[-1])
        yield port, started[-1].pid
    finally:
        for process in started:
            process.terminate()
            process.wait(10)


async def call(http: aiohttp.ClientSession, base: str, session: str, turns: int, done_at: dict[str, float]) -> int:
    """One call: ``turns`` streamed turns back to back; the text pieces it received."""
    pieces = 0
    for _ in range(turns):
        body = {"sessionId": session, "text": "喂"}
        async with http.post(f"{base}/chat?stream=true", json=body) as response:
            async for event in read_events(response):
                if event.event == b"text_delta":
                    pieces += 1
                elif event.event == b"done":
                    done_at[orjson.loads(event.data)["turnId"]] = time.monotonic()
    return pieces


async def viewer(
    http: aiohttp.ClientSession, base: str, counts: dict[str, int], ready: asyncio.Event, end_at: dict[str, float]
) -> None:
    async with http.get(f"{base}/console/api/feed") as response:
        ready.set()
        async for event in read_events(response):
            message = orjson.loads(event.data)
            kind = message["type"]
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "end":
                end_at.setdefault(message["turnId"], time.monotonic())


async def phase(base: str, pid: int, turns: int, concurrency: int, viewers: int, tag: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        counts: list[dict[str, int]] = [{} for _ in range(viewers)]
        readies = [asyncio.Event() for _ in range(viewers)]
        done_at: dict[str, float] = {}  # turn id -> the gateway read its `done`
        end_at: dict[str, float] = {}  # turn id -> the first viewer read its `end`
        watchers = [asyncio.create_task(viewer(http, base, c, r, end_at)) for c, r in zip(counts, readies, strict=True)]
        await asyncio.gather(*(r.wait() for r in readies))
        await call(http, base, f"{tag}-warm", 1, {})  # a first turn: hooks (or unhooks) the feed
        per_call = max(1, turns // concurrency)
        before, started = cpu_seconds(pid), time.perf_counter()
        pieces = await asyncio.gather(*(call(http, base, f"{tag}-{n}", per_call, done_at) for n in range(concurrency)))
        cpu, wall = cpu_seconds(pid) - before, time.perf_counter() - started
        done = per_call * concurrency
        await asyncio.sleep(0.2)  # let the viewers read what is in flight before they hang up
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return {
        "turns": done,
        "cpu_ms_per_turn": cpu * 1000 / done,
        "turns_per_s": done / wall,
        "text_pieces": sum(pieces),
        "viewer_deltas": [c.get("delta", 0) for c in counts],
        # How much later a viewer learnt that a turn ended than its gateway did (negative: earlier).
        "feed_lag_ms": sorted((end_at[t] - done_at[t]) * 1000 for t in done_at if t in end_at),
    }


def run(
    turns: int = 2000,
    concurrency: int = 20,
    viewers: int = 10,
    rounds: int = 3,
    store: str = "memory://",
    app_root: Path = ROOT,
) -> dict[str, Any]:
    """CPU per turn with the console closed and with ``viewers`` pages open (medians of ``rounds``).

    ``app_root``: run the callagent found there (a checkout of another commit, to compare the
    closed figure with a build that has no console; ``viewers`` must then be 0).
    """
    with tempfile.TemporaryDirectory() as tmp, processes(store, Path(tmp), app_root) as (port, pid):
        base = f"http://127.0.0.1:{port}"
        results: dict[str, list[dict[str, Any]]] = {"closed": [], "watched": []}

        async def all_rounds() -> None:
            for n in range(rounds):
                results["closed"].append(await phase(base, pid, turns, concurrency, 0, f"closed{n}"))
                if viewers:
                    results["watched"].append(await phase(base, pid, turns, concurrency, viewers, f"watched{n}"))

        asyncio.run(all_rounds())
    closed = statistics.median(r["cpu_ms_per_turn"] for r in results["closed"])
    watched = statistics.median(r["cpu_ms_per_turn"] for r in results["watched"]) if viewers else closed
    pieces = [r["text_pieces"] for r in results["watched"]]
    lags = sorted(lag for r in results["watched"] for lag in r["feed_lag_ms"])
    delivered = [min(r["viewer_deltas"]) for r in results["watched"]]
    return {
        "store": store.split(":", 1)[0],
        "turns_per_phase": results["closed"][0]["turns"],
        "concurrency": concurrency,
        "viewers": viewers,
        "rounds": rounds,
        "cpu_ms_per_turn_closed": round(closed, 3),
        "cpu_ms_per_turn_watched": round(watched, 3),
        "watched_over_closed": round(watched / closed, 3),
        "cpu_ms_per_turn_closed_rounds": [round(r["cpu_ms_per_turn"], 3) for r in results["closed"]],
        "cpu_ms_per_turn_watched_rounds": [round(r["cpu_ms_per_turn"], 3) for r in results["watched"]],
        # Every viewer should get every text piece of the measured turns (plus the warm-up's).
        "feed_lag_ms_p50": round(lags[len(lags) // 2], 2) if lags else None,
        "feed_lag_ms_p99": round(lags[int(len(lags) * 0.99)], 2) if lags else None,
        "feed_lag_ms_max": round(lags[-1], 2) if lags else None,
        "every_viewer_got_every_piece": all(d >= p for d, p in zip(delivered, pieces, strict=True))
        if viewers
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="turns per phase")
    parser.add_argument("--concurrency", type=int, default=20, help="calls at once")
    parser.add_argument("--viewers", type=int, default=10, help="console pages open while watched")
    parser.add_argument("--rounds", type=int, default=3, help="closed/watched phase pairs")
    parser.add_argument(
        "--store", default="memory://", help="callagent's store (redis://... puts the feed through Redis)"
    )
    parser.add_argument("--app-root", type=Path, default=ROOT, help="run the callagent checked out here")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    a = parser.parse_args()
    figures = run(a.turns, a.concurrency, a.viewers, a.rounds, a.store, a.app_root)
    print(json.dumps(figures, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
