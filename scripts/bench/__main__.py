"""The command line: ``python -m scripts.bench [--quick|--full] [--json PATH] [--only LIST]``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson

from .common import SCENARIOS
from .report import report, targets
from .run import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench", description="Benchmark callagent against the FastGPT emulator on loopback."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick", help="small counts, < 1 minute")
    size.add_argument(
        "--full", dest="mode", action="store_const", const="full", help="1000 calls, 5000 sockets, the console"
    )
    parser.set_defaults(mode="default")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--only", metavar="LIST", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--loop", choices=("default", "asyncio"), default="default", help="callagent's event loop")
    parser.add_argument("--py-spy", metavar="PATH", help="record callagent under saturation (.svg, or .txt raw)")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        type=Path,
        help="another checkout (e.g. a git worktree of an earlier commit): its callagent joins the relay comparison",
    )
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(SCENARIOS):
        parser.error(f"--only: choose from {', '.join(SCENARIOS)}")
    if args.baseline is not None and not (args.baseline / "callagent" / "__init__.py").is_file():
        parser.error(f"--baseline: {args.baseline} is not a callagent checkout")

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
