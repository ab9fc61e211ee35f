"""The turn engine alone: CPU per turn without sockets, upstream or load generator.

``python -m scripts.bench.engine [--turns N] [--calls N]`` runs turns through ``TurnEngine``
with the memory store and a scripted upstream that yields the benchmark's reply in the
emulator's 4-character pieces (one loop round trip between pieces, as network reads are),
each turn's events delivered to a writer that encodes its SSE frames. It prints this
process's CPU time per turn: a figure that moves by a few percent, not by the tens of
percent a busy machine's socket benchmarks move by, so it tells a change to the engine's
hot path from noise. The full benchmark (``python -m scripts.bench``) measures the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import AsyncGenerator

from callagent.events import Done, Event, SSEFrames
from callagent.logs import configure_logging
from callagent.settings import Settings
from callagent.stages import StageTable
from callagent.store import MemoryStore
from callagent.turns import TurnEngine, TurnRequest
from callagent.upstream.base import UpstreamChunk, UpstreamTurn

from .common import CALLER_TEXT, CHUNK_CHARS, REPLY

PIECES = [REPLY[i : i + CHUNK_CHARS] for i in range(0, len(REPLY), CHUNK_CHARS)]


class ScriptedUpstream:
    """The benchmark's reply, piece by piece, one loop round trip apart."""

    name = "scripted"
    history_turns = 0

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        for piece in PIECES:
            await asyncio.sleep(0)
            yield piece

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        return None

    async def delete_session(self, session_id: str) -> None:
        return None

    async def check_ready(self) -> None:
        return None


async def run(turns: int, calls: int) -> dict[str, float]:
    """CPU µs per turn of ``turns`` turns, ``calls`` at a time (after a warm-up), and how
    many turns, warm-up included, ended completed."""
    store = MemoryStore()
    await store.open()
    engine = TurnEngine(Settings(store="memory://"), store, ScriptedUpstream(), StageTable.load())
    completed = 0

    async def one(n: int) -> None:
        async with engine.turn(TurnRequest(f"call-{n % calls}", CALLER_TEXT, transport="sse")) as turn:
            frames, seq = SSEFrames(turn.id), 0

            async def write(event: Event) -> None:
                nonlocal seq, completed
                seq += 1
                frames.frame(event, seq)
                completed += isinstance(event, Done) and event.status == "completed"

            await turn.deliver(write)

    async def batch(start: int) -> None:
        await asyncio.gather(*(one(start + k) for k in range(calls)))

    for start in range(0, 20 * calls, calls):
        await batch(start)
    began = time.process_time()
    for start in range(0, turns, calls):
        await batch(start)
    spent = time.process_time() - began
    await engine.close()
    return {"us_per_turn": spent / (turns // calls * calls) * 1e6, "completed": completed}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.engine", description=__doc__)
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=100, help="turns at a time")
    args = parser.parse_args()
    configure_logging("json", "warning")  # as the benchmark runs callagent
    gc.freeze()  # as the server does at start-up (callagent.web.server)
    gc.set_threshold(10_000, 10, 10)
    try:
        import uvloop
    except ImportError:
        figures = asyncio.run(run(args.turns, args.calls))
    else:
        figures = uvloop.run(run(args.turns, args.calls))
    us = figures["us_per_turn"]
    print(f"turn engine: {us:.1f} µs of CPU per turn ({args.turns} turns, {args.calls} at a time, memory store)")


if __name__ == "__main__":
    main()
