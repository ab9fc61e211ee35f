"""Run a Python module as ``__main__`` while counting its garbage collections.

``python -m scripts.bench.gcwatch OUT MODULE [ARGS...]`` installs a ``gc.callbacks`` hook that
counts finished collections per generation, then runs ``MODULE`` as ``python -m MODULE ARGS``
would. On ``SIGUSR1`` and at exit it writes the counts as JSON to ``OUT`` (written to a
temporary name, then renamed, so a reader never sees half a file). The benchmark runs callagent
and the relay this way and reads the counts before and after a load window: collections per
1,000 turns, with nothing added to the measured program.
"""

from __future__ import annotations

import atexit
import gc
import os
import runpy
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

counts = [0, 0, 0]
collected = [0]


def on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop":
        counts[info["generation"]] += 1
        collected[0] += info["collected"]


def write(out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(f'{{"collections": {counts}, "collected": {collected[0]}, "pid": {os.getpid()}}}')
    tmp.replace(out)


def main() -> None:
    out, module, *args = sys.argv[1:]
    path = Path(out)
    gc.callbacks.append(on_gc)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        write(path)

    signal.signal(signal.SIGUSR1, on_signal)
    atexit.register(write, path)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
