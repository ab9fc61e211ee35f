"""Constants, benchmark modes, statistics and console output shared by the whole benchmark."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HOST = "127.0.0.1"
BASELINE = "baseline"
"""The relay comparison's name for the callagent of ``--baseline DIR`` (memory store)."""
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
    ratio_calls: int = 150  # closed-loop calls of each callagent-versus-relay window: neither CPU saturated
    ratio_seconds: float = 2.5  # each such window, after its warm-up
    ratio_warm: float = 1.0  # seconds of load before each window opens
    ratio_sqlite: bool = True  # also callagent with the SQLite store
    ratio_rounds: int = 5  # relay and callagent back to back this many times: medians
    sizing_calls: tuple[int, ...] = (10, 100, 1000)  # CPU per turn at these concurrencies
    core_start: int = 50  # the one-core search starts here and doubles
    core_max: int = 3200
    core_seconds: float = 45.0  # the one-core search stops after this
    core_turns: int = 4  # measured turns per call of each probe (both sides)


MODES = {
    "quick": Mode(
        "quick",
        latency_sse=((1, 10), (10, 3), (100, 2)),
        latency_ws=((1, 8), (100, 2)),
        clause=((1, 5), (100, 1)),
        saturation_workers=(400,),
        saturation_seconds=2.0,
        sqlite_workers=(),  # the relay comparison has SQLite in the default mode
        interrupts=20,
        idle_sockets=500,
        streaming_turns=100,
        rounds=1,
        ratio_calls=100,
        ratio_seconds=1.0,
        ratio_warm=0.5,
        ratio_sqlite=False,
        ratio_rounds=1,
        sizing_calls=(10, 100),
        core_start=100,
        core_max=400,
        core_seconds=4.0,
        core_turns=2,
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
SCENARIOS = ("latency", "clause", "saturation", "relay", "sizing", "core", "interrupt", "memory", "console")
DEFAULT_OFF = {"console"}  # run with --full or --only


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


def progress(line: str) -> None:
    print(f"  .. {line}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
