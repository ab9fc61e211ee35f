"""Serve the FastGPT emulator: ``python -m scripts.emulators.fastgpt --port 3000 [--brain local]``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..common import emulator_parser, serve
from .app import create_emulator_app
from .brains import DEFAULT_REPLY, Brain, LocalBrain, ScriptedBrain
from .builds import BUILDS, DEFAULT_BUILD
from .faults import FAULT_MODES


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = emulator_parser(
        "scripts.emulators.fastgpt",
        "Serve a FastGPT OpenAPI emulator.",
        port=3000,
        api_key="fastgpt-test",
        fault_modes=FAULT_MODES,
    )
    parser.add_argument("--app-id", default="app1")
    parser.add_argument("--brain", choices=("scripted", "local"), default="scripted")
    parser.add_argument("--chunk-chars", type=int, default=4)
    parser.add_argument("--first-chunk-delay", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval in seconds")
    parser.add_argument("--build", choices=sorted(BUILDS), default=DEFAULT_BUILD, help="the FastGPT release to be")
    parser.add_argument("--access-log", action="store_true", help="log every request (slows benchmarks)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    brain: Brain = LocalBrain() if args.brain == "local" else ScriptedBrain(args.reply or [DEFAULT_REPLY])
    app = create_emulator_app(
        brain,
        api_key=args.api_key,
        app_id=args.app_id,
        chunk_chars=args.chunk_chars,
        chunk_delay=args.chunk_delay,
        first_chunk_delay=args.first_chunk_delay,
        heartbeat_interval=args.heartbeat,
        build=args.build,
        fault=args.fault,
    )
    access_log = None
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        access_log = logging.getLogger("aiohttp.access")
    serve(app, args, access_log=access_log)


if __name__ == "__main__":
    main()
