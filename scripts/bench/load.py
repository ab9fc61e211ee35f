"""Closed-loop load: N calls at once, each its turns back to back."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from .calls import OpenAICall, Turn, WsCall, sse_direct, sse_via

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


def openai_calls(http: aiohttp.ClientSession, base: str) -> MakeCall:
    def make(session_id: str) -> tuple[TurnFn, Callable[[], Awaitable[None]]]:
        return OpenAICall(http, base, session_id).turn, _nothing

    return make


def calls_for(http: aiohttp.ClientSession, base: str, transport: str) -> MakeCall:
    """Calls through callagent (or the relay) over ``sse``, ``ws`` or ``openai``."""
    if transport == "ws":
        return ws_calls(http, base)
    if transport == "openai":
        return openai_calls(http, base)
    return sse_calls(http, base, direct=False)
