"""What the upstream emulators (FastGPT, Dify, OpenAI-compatible) share.

Each emulator speaks its own protocol, but they are driven alike: a fault mode for all the
next calls or for the next few only (``FaultSwitch``), scripted replies cut into small pieces
the way a model's tokens arrive, and the same command line to serve one on a port (the server
runs with ``handler_cancellation=True`` so that a client leaving is seen at once).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Final, Generic, ParamSpec

from aiohttp import web

DEFAULT_REPLY: Final = "<state>1002</state>您好，请问有人受伤吗？"

P = ParamSpec("P")


class FaultSwitch:
    """The fault the next calls get: ``set_fault(mode)`` for all of them, ``set_fault(mode, n)``
    for the next ``n`` only, after which the standing one applies again."""

    def __init__(self, modes: Collection[str], fault: str | None = None) -> None:
        self.fault_modes = modes
        self.check_fault(fault)
        self.fault = fault
        self._once: list[str | None] = []

    def check_fault(self, mode: str | None) -> None:
        if mode is not None and mode not in self.fault_modes:
            raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(sorted(self.fault_modes))}")

    def set_fault(self, mode: str | None, count: int | None = None) -> None:
        """Use ``mode`` for the next ``count`` calls (``None``: for all of them)."""
        self.check_fault(mode)
        if count is None:
            self.fault, self._once = mode, []
        else:
            self._once = [mode] * count

    def take_fault(self) -> str | None:
        return self._once.pop() if self._once else self.fault


class ScriptedReplies(Generic[P]):
    """Replies in turn (the last one repeats), or what a function of the call returns."""

    def __init__(self, replies: Sequence[str] | Callable[P, str] = (DEFAULT_REPLY,)) -> None:
        self._replies = replies
        self.calls = 0

    def reply(self, *args: P.args, **kwargs: P.kwargs) -> str:
        self.calls += 1
        if callable(self._replies):
            return self._replies(*args, **kwargs)
        return self._replies[min(self.calls, len(self._replies)) - 1]


def pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters, as a stream sends it."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def emulator_parser(
    module: str,
    description: str,
    *,
    port: int,
    api_key: str,
    fault_modes: Collection[str],
    api_key_help: str | None = None,
) -> argparse.ArgumentParser:
    """The options every emulator takes; the caller adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--api-key", default=api_key, help=api_key_help)
    parser.add_argument("--reply", action="append", metavar="TEXT", help="a scripted reply (repeatable: used in turn)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between reply pieces")
    parser.add_argument("--fault", choices=sorted(fault_modes))
    return parser


def serve(app: web.Application, args: argparse.Namespace, *, access_log: logging.Logger | None = None) -> None:
    web.run_app(app, host=args.host, port=args.port, handler_cancellation=True, access_log=access_log)
