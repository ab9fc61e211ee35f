"""Print pip constraints pinning every runtime dependency to the minimum setup.cfg declares.

``make test-min`` installs callagent with these constraints and runs the suite, so the
declared lower bounds stay true: ``python scripts/minimum_versions.py > constraints.txt``.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
_LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([0-9][0-9A-Za-z.]*)")


def minimum_pins(setup_cfg: Path = SETUP_CFG) -> list[str]:
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    pins = []
    for line in config["options"]["install_requires"].strip().splitlines():
        match = _LOWER_BOUND.match(line)
        if match is None:
            raise SystemExit(f"setup.cfg: {line.strip()!r} declares no lower bound")
        name = match.group(1).split("[")[0]
        pins.append(f"{name}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    sys.stdout.write("".join(pin + "\n" for pin in minimum_pins()))
