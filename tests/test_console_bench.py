"""``scripts/console_bench.py`` runs end to end at a tiny size (the figures themselves are for
docs/benchmarks.md, not asserted here): its processes start, viewers get every text piece."""

from __future__ import annotations

import pytest

from scripts import console_bench

pytestmark = pytest.mark.slow


def test_the_console_benchmark_runs() -> None:
    figures = console_bench.run(turns=20, concurrency=2, viewers=2, rounds=1)
    assert figures["turns_per_phase"] == 20 and figures["viewers"] == 2
    assert figures["cpu_ms_per_turn_closed"] >= 0 and figures["cpu_ms_per_turn_watched"] >= 0
    assert figures["every_viewer_got_every_piece"] is True
    assert figures["feed_lag_ms_p50"] is not None
