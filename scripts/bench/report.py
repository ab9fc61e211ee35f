"""The report: tables of the figures and the targets they are checked against."""

from __future__ import annotations

from typing import Any

from .common import BASELINE, fmt


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    up = results["upstream"]
    out = [
        f"callagent benchmark ({results['mode']} mode): {m['cpus']} CPUs shared by the emulator, callagent and the "
        "load generator, loopback only",
        f"callagent {results['callagent_code']} on {results['callagent_loop']}; load generator on "
        f"{results['loadgen_loop']}; Python {m['python']}, aiohttp {m['aiohttp']}; "
        f"load average before the run {results['load_before']:.2f}",
        f"upstream: FastGPT emulator, {up['chunk_chars']} characters every {up['chunk_delay_ms']:g} ms, "
        f"reply {up['reply']!r}",
        "calls are closed loops (turns back to back, no think time); added = via callagent - direct, per quantile",
        "",
    ]
    for key, title in (
        ("first_text", "Time to first text (ms): first text_delta via callagent vs first speakable chunk direct"),
        ("first_clause", "Time to first clause (ms), ?segment=clause: via callagent vs the same segmenter direct"),
    ):
        if key not in results:
            continue
        out.append(title)
        rows = [
            [
                r["cpus"],
                r["transport"],
                str(r["calls"]),
                str(r["turns"]),
                fmt(r["direct_p50_ms"]),
                fmt(r["direct_p99_ms"]),
                fmt(r["via_p50_ms"]),
                fmt(r["via_p99_ms"]),
                fmt(r["added_p50_ms"]),
                fmt(r["added_p99_ms"]),
                str(r["errors"]),
            ]
            for r in results[key]
        ]
        headers = ["cpus", "via", "calls", "turns", "direct p50", "p99", "callagent p50", "p99", "added p50"]
        out += [table([*headers, "added p99", "errors"], rows), ""]
    if "saturation" in results:
        out.append("Saturation (closed loop; CPU of the callagent process only: utime+stime from /proc)")
        rows = [
            [
                r["target"],
                r["transport"],
                r["store"],
                str(r["workers"]),
                fmt(r["turns_per_s"], 1),
                fmt(r["first_text_p50_ms"], 1),
                fmt(r["cpu_us_per_turn"], 0),
                fmt(r["cpu_us_per_event"], 1),
                fmt(r["events_per_turn"], 1),
                fmt(r["callagent_cores"]),
                fmt(r["emulator_cores"]),
                fmt(r["loadgen_cores"]),
                fmt(r["other_cores"]),
                str(r["errors"]),
            ]
            for r in results["saturation"]
        ]
        headers = ["target", "via", "store", "calls", "turns/s", "1st text p50", "us/turn", "us/event", "events/turn"]
        out += [table([*headers, "cores: callagent", "emulator", "loadgen", "other", "errors"], rows), ""]
    out += versus_relay(results) + sizing(results)
    if "interrupt" in results:
        out.append("Barge-in to upstream connection closed (ms; the emulator's clock, same CLOCK_MONOTONIC)")
        rows = [
            [
                r["how"],
                str(r["samples"]),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["max_ms"]),
                fmt(r.get("ack_p50_ms")),
                str(r["finished_before_barge_in"]),
                str(r["upstream_not_closed"]),
                str(r["clock_check_failures"]),
                str(r["errors"]),
            ]
            for r in results["interrupt"]
        ]
        headers = ["barge-in", "n", "p50", "p99", "max", "ack p50", "too late", "not closed", "clock bad", "errors"]
        out += [table(headers, rows), ""]
    if "memory" in results:
        idle, hold = results["memory"]["idle_websocket"], results["memory"]["streaming_turn"]
        out += [
            "Resident memory of callagent (VmRSS, fresh process each)",
            f"  idle WebSocket (bound with `start`): {fmt(idle['kib_per_socket'])} KiB each "
            f"({idle['sockets']} sockets, {idle['rss_before_kib']} -> {idle['rss_with_sockets_kib']} KiB, "
            f"{idle['failures']} failed)",
            f"  streaming SSE turn (with its upstream stream): {fmt(hold['kib_per_turn'])} KiB each "
            f"({hold['turns_at_once']} at once, {hold['rss_before_kib']} -> {hold['rss_at_peak_kib']} KiB, "
            f"{hold['failures']} failed)",
            "",
        ]
    if "console" in results:
        c = results["console"]
        out += [
            f"Console ({c['concurrency']} calls, {c['turns_per_phase']} turns per phase, medians of {c['rounds']}): "
            f"{fmt(c['cpu_ms_per_turn_closed'], 3)} ms CPU per turn closed, {fmt(c['cpu_ms_per_turn_watched'], 3)} "
            f"with {c['viewers']} pages watching (x{fmt(c['watched_over_closed'])}); feed lag p50 "
            f"{fmt(c['feed_lag_ms_p50'])} ms; every viewer got every piece: {c['every_viewer_got_every_piece']}",
            "",
        ]
    busy = max((r["other_cores"] for r in results.get("saturation", ())), default=0.0)
    if busy > 0.25:
        out += [f"note: other processes used up to {busy:.2f} cores during the saturation runs: noisy figures", ""]
    checks = results.get("targets", [])
    if checks:
        out.append("Targets (reported, not enforced)")
        width = max(len(c["what"]) for c in checks)
        for c in checks:
            verdict = "-" if c["met"] is None else ("met" if c["met"] else "NOT met")
            value = str(c["value"]) if isinstance(c["value"], int) else fmt(c["value"])
            out.append(f"  {c['what'].ljust(width)}  {value} (target {c['target']})  {verdict}")
        out.append("")
    return "\n".join(out)


def versus_relay(results: dict[str, Any]) -> list[str]:
    if "versus_relay" not in results:
        return []
    rows = [
        [
            r["transport"],
            r["store"],
            str(r["calls"]),
            str(r["rounds"]),
            fmt(r["callagent_us_per_turn"], 0),
            fmt(r["relay_us_per_turn"], 0),
            fmt(r["ratio_per_turn"]),
            " ".join(fmt(x) for x in r["ratio_rounds"]),
            fmt(r["callagent_us_per_event"], 1),
            fmt(r["relay_us_per_event"], 1),
            fmt(r["callagent_gc_per_1000_turns"], 1),
            fmt(r["relay_gc_per_1000_turns"], 1),
            str(r["errors"]),
        ]
        for r in results["versus_relay"]
    ]
    headers = ["via", "store", "calls", "rounds", "us/turn", "relay", "ratio", "per round", "us/event", "relay"]
    return [
        "CPU per turn, callagent vs the bare relay (same emulator and load, back to back; medians of the rounds;"
        " CPU of each process only)",
        table([*headers, "gc/1000 turns", "relay", "errors"], rows),
        "",
    ]


def sizing(results: dict[str, Any]) -> list[str]:
    out = []
    if "cpu_by_calls" in results:
        out.append("Sizing: CPU per turn by concurrency (SSE, memory store, closed loop)")
        rows = [
            [
                str(r["calls"]),
                fmt(r["turns_per_s"], 1),
                fmt(r["cpu_us_per_turn"], 0),
                fmt(r["cpu_us_per_event"], 1),
                fmt(r["cores"]),
                fmt(r["gc_per_1000_turns"], 1),
                fmt(r["first_text_p50_ms"], 1),
                str(r["errors"]),
            ]
            for r in results["cpu_by_calls"]
        ]
        headers = ["calls", "turns/s", "us/turn", "us/event", "cores", "gc/1000 turns", "1st text p50", "errors"]
        out += [table(headers, rows), ""]
    core = results.get("one_core")
    if core and "skipped" in core:
        out += [f"Sizing: calls per core: skipped ({core['skipped']})", ""]
    elif core:
        probes = ", ".join(f"{p['calls']}: {fmt(p['added_p99_ms'], 1)}" for p in core["probes"])
        at_least = "at least " if core["capped"] else ""
        out += [
            f"Sizing: calls one core serves with added first-text p99 < {core['budget_ms']:g} ms (SSE, callagent "
            f"pinned to one CPU, the rest on the other): {at_least}{core['calls']}"
            + ("" if core["first_over"] is None else f" (over at {core['first_over']})"),
            f"  probes (calls: added p99 ms): {probes}",
            "",
        ]
    if "memory" in results:
        idle, hold = results["memory"]["idle_websocket"], results["memory"]["streaming_turn"]
        out += [
            f"Sizing: memory per idle call {fmt(idle['kib_per_socket'])} KiB, per active call "
            f"{fmt(hold['kib_per_turn'])} KiB (see Resident memory below)",
            "",
        ]
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the run lands against the issue's targets."""
    checks: list[dict[str, Any]] = []

    def check(what: str, value: float | None, target: str, met: bool | None) -> None:
        checks.append({"what": what, "value": value, "target": target, "met": met})

    for row in results.get("first_text", ()):
        limit = {1: 0.5, 10: 2.0, 100: 2.0}.get(row["calls"])
        cpus = f", CPUs {row['cpus']}"
        if row["transport"] == "sse" and limit is not None:
            value = row["added_p50_ms"]
            met = None if value is None else value <= limit
            check(f"added first text p50, {row['calls']} SSE calls{cpus} (ms)", value, f"<= {limit:g}", met)
        if row["calls"] == 100:
            value = row["added_p99_ms"]
            met = None if value is None else value <= 10
            check(f"added first text p99, 100 {row['transport'].upper()} calls{cpus} (ms)", value, "<= 10", met)
        if row["calls"] >= 1000:
            what = f"errors, {row['calls']} concurrent {row['transport'].upper()} calls"
            check(what, row["errors"], "0", row["errors"] == 0)
    for transport in ("sse", "ws"):
        rows = [
            r["turns_per_s"]
            for r in results.get("saturation", ())
            if r["target"] == "callagent" and r["store"] == "memory" and r["transport"] == transport
        ]
        if rows:
            what = f"saturated throughput, {transport.upper()}, memory store (turns/s)"
            check(what, max(rows), ">= 900", max(rows) >= 900)
    for row in results.get("versus_relay", ()):
        if row["transport"] in ("sse", "ws") and row["store"] != BASELINE:
            limit = 1.3 if row["store"] == "memory" else 1.5
            what = f"callagent/relay CPU per turn, {row['transport'].upper()}, {row['store']}"
            ratio = row["ratio_per_turn"]
            check(what, ratio, f"<= {limit:g}", None if ratio is None else ratio <= limit)
    if "memory" in results:
        per = results["memory"]["idle_websocket"]["kib_per_socket"]
        check("memory per idle WebSocket (KiB)", per, "<= 30", None if per is None else per <= 30)
    for row in results.get("interrupt", ()):
        if row["how"] == "ws interrupt":
            p99 = row["p99_ms"]
            check("interrupt to upstream closed p99 (ms)", p99, "<= 20", None if p99 is None else p99 <= 20)
    return checks
