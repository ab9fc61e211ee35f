"""The client scripts, run as real processes against a real callagent served by the test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from callagent.settings import Settings

ROOT = Path(__file__).resolve().parent.parent  # the scripts run as `python -m scripts.<name>` from here
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1"}
GREETING = "您好，这里是交通事故快处服务。请问现场有人受伤吗？"
# Slow enough that a barge-in lands mid-reply; a turn deadline that the slow agent misses.
SLOW = {"upstream": "local", "store": "memory://", "local_chunk_delay": 0.1}
FAILING = {"upstream": "local", "store": "memory://", "local_chunk_delay": 1.0, "turn_timeout": 0.3}


def base_url(client: Any) -> str:
    return str(client.make_url("")).rstrip("/")


async def run_script(name: str, *args: str, stdin: bytes | None = None, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"scripts.{name.removesuffix('.py')}",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sse_lines(out: str) -> list[tuple[str, dict[str, Any]]]:
    """stream_chat's output: one `event {json}` line per event."""
    events = []
    for line in out.splitlines():
        name, _, data = line.partition(" ")
        events.append((name, json.loads(data)))
    return events


def tagged(out: str, tag: str) -> list[str]:
    """ws_chat's lines of one kind (``[stage]``, ``[text]``...), without the tag."""
    prefix = f"[{tag}]"
    return [line[len(prefix) :].strip() for line in out.splitlines() if line.startswith(prefix)]


# -- stream_chat ------------------------------------------------------------------------------


async def test_stream_chat_prints_the_events_of_a_turn(client: Any) -> None:
    code, out, err = await run_script("stream_chat.py", "--url", base_url(client), "a1002", "发生了交通事故")
    assert code == 0, err
    events = sse_lines(out)
    names = [name for name, _ in events]
    assert names[0] == "stage_code" and names[-1] == "done" and set(names[1:-1]) == {"text_delta"}
    assert (events[0][1]["nextStageCode"], events[0][1]["nextStage"]) == ("1002", "通话中")
    assert "".join(d["text"] for n, d in events if n == "text_delta") == GREETING
    assert events[-1][1]["status"] == "completed"
    assert [d["seq"] for _, d in events] == list(range(1, len(events) + 1))
    assert "通话中" in out, "non-ASCII is printed as is"


async def test_stream_chat_prints_each_event_the_moment_it_arrives(make_client: Any) -> None:
    client = await make_client(Settings(**{**SLOW, "local_chunk_delay": 0.15}))  # type: ignore[arg-type]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.stream_chat",
        "--url",
        base_url(client),
        "s-live",
        "发生了交通事故",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[str, float]] = []
    async with asyncio.timeout(20):
        while line := await proc.stdout.readline():
            arrivals.append((line.decode().split(" ", 1)[0], loop.time()))
        await proc.communicate()
    assert proc.returncode == 0
    first_text = next(t for name, t in arrivals if name == "text_delta")
    done = next(t for name, t in arrivals if name == "done")
    assert done - first_text > 0.4, "the text was printed as it streamed, not at the end"


async def test_stream_chat_segment_clause_gets_whole_clauses(client: Any) -> None:
    code, out, _ = await run_script(
        "stream_chat.py", "--url", base_url(client), "--segment", "clause", "s-clause", "发生了交通事故"
    )
    assert code == 0
    texts = [d["text"] for name, d in sse_lines(out) if name == "text_delta"]
    assert "".join(texts) == GREETING and len(texts) >= 2
    assert all(text[-1] in "，。？" for text in texts), texts


async def test_stream_chat_exits_non_zero_on_an_error_event(make_client: Any) -> None:
    client = await make_client(Settings(**FAILING))  # type: ignore[arg-type]
    code, out, _ = await run_script("stream_chat.py", "--url", base_url(client), "s-fail", "发生了交通事故")
    assert code == 1
    events = sse_lines(out)
    assert events[-1][0] == "error" and events[-1][1]["type"] == "upstream_timeout"
    assert [d["nextStageCode"] for n, d in events if n == "stage_code"][-1] == "0001", "the fallback stage"
    assert "done" not in [name for name, _ in events]


async def test_stream_chat_reports_a_refused_request(client: Any) -> None:
    code, out, err = await run_script("stream_chat.py", "--url", base_url(client), "not a session id", "喂")
    assert code == 1 and "HTTP 422" in err
    ((name, error),) = sse_lines(out)
    assert name == "error" and error["type"] == "invalid_request" and error["code"] == "422"


async def test_api_key_is_sent_as_a_bearer_token(make_client: Any) -> None:
    client = await make_client(Settings(upstream="local", store="memory://", api_keys=("k-1",)))  # type: ignore[arg-type]
    code, out, _ = await run_script("stream_chat.py", "--url", base_url(client), "s-key", "喂")
    assert code == 1 and '"type":"unauthorized"' in out
    code, out, _ = await run_script("stream_chat.py", "--url", base_url(client), "--api-key", "k-1", "s-key", "喂")
    assert code == 0 and out.splitlines()[-1].startswith("done ")
    code, out, _ = await run_script("nostream_chat.py", "--url", base_url(client), "--api-key", "k-1", "s-key", "喂")
    assert code == 0 and json.loads(out)["status"] == "completed"
    code, _, err = await run_script("ws_chat.py", "--url", base_url(client), "--script", os.devnull)
    assert code == 1 and "401" in err
    code, out, _ = await run_script("ws_chat.py", "--url", base_url(client), "--api-key", "k-1", stdin="喂\n".encode())
    assert code == 0 and tagged(out, "done") and tagged(out, "done")[0].startswith("completed")


# -- nostream_chat ----------------------------------------------------------------------------


async def test_nostream_chat_prints_the_json_reply(client: Any) -> None:
    code, out, err = await run_script("nostream_chat.py", "--url", base_url(client), "a1002", "发生了交通事故")
    assert code == 0, err
    reply = json.loads(out)
    assert (reply["code"], reply["msg"], reply["sessionId"]) == ("200", "success", "a1002")
    assert (reply["nextStageCode"], reply["nextStage"], reply["status"]) == ("1002", "通话中", "completed")
    assert reply["text"] == GREETING and reply["turnId"]
    assert '\n  "nextStageCode": "1002"' in out, "pretty-printed"
    assert "通话中" in out and "\\u" not in out, "UTF-8, not escaped"


async def test_nostream_chat_exits_non_zero_on_a_failed_turn(make_client: Any) -> None:
    client = await make_client(Settings(**FAILING))  # type: ignore[arg-type]
    code, out, _ = await run_script("nostream_chat.py", "--url", base_url(client), "s-fail", "喂")
    assert code == 1
    reply = json.loads(out)
    assert reply["status"] == "failed" and reply["error"]["type"] == "upstream_timeout"
    assert reply["nextStageCode"] == "0001" and reply["text"].endswith(Settings().fallback_text)


async def test_nostream_chat_prints_a_json_error(client: Any) -> None:
    code, out, _ = await run_script("nostream_chat.py", "--url", base_url(client), "a 1", "喂")
    assert code == 1 and json.loads(out)["type"] == "invalid_request"


# -- ws_chat ----------------------------------------------------------------------------------


async def test_ws_chat_plays_a_scripted_call(client: Any, tmp_path: Path) -> None:
    script = tmp_path / "call.txt"
    script.write_text("# someone is hurt\n喂\n\n方便\n有人受伤\n", encoding="utf-8")
    code, out, err = await run_script(
        "ws_chat.py", "--url", base_url(client), "--session", "call-1", "--script", str(script)
    )
    assert code == 0, err
    assert [s.split()[0] for s in tagged(out, "stage")] == ["1002", "1002", "0003"]
    assert tagged(out, "caller") == ["喂", "方便", "有人受伤"]
    assert [d.split()[0] for d in tagged(out, "done")] == ["completed"] * 3
    assert tagged(out, "ack") == ["start call-1"]
    transcript = out.split("--- transcript of session call-1 ---\n", 1)[1].splitlines()
    assert transcript[0] == "caller: 喂" and transcript[1].startswith("agent:  [1002 通话中] ")
    assert transcript[4] == "caller: 有人受伤" and transcript[5].startswith("agent:  [0003 有人伤转接人工] ")
    # Each utterance waited for the previous turn's end.
    lines = out.splitlines()
    for caller_line in [i for i, line in enumerate(lines) if line.startswith("[caller]")][1:]:
        assert lines[caller_line - 1].startswith("[done]")


async def test_ws_chat_reads_a_script_from_stdin_with_commands(client: Any) -> None:
    stdin = "/set sjhm 13812345678\n/get sjhm\n发生了交通事故\n没有\n/undo\n/ping\n/get\n".encode()
    code, out, err = await run_script(
        "ws_chat.py", "--url", base_url(client), "--session", "call-2", "--segment", "clause", stdin=stdin
    )
    assert code == 0, err
    assert tagged(out, "info")[0] == 'sjhm = "13812345678"'
    texts = tagged(out, "text")
    assert "".join(texts[:2]) == GREETING and all(t[-1] in "，。？" for t in texts), "clauses (segment=clause)"
    acks = tagged(out, "ack")
    assert acks[1] == "set_info sjhm" and acks[2].startswith("delete_last_turn: deleted turn ")
    assert len(tagged(out, "pong")) == 1
    assert json.loads(tagged(out, "info")[1])["sjhm"] == "13812345678"


async def test_ws_chat_interrupt_after_ms_barges_in(make_client: Any) -> None:
    client = await make_client(Settings(**SLOW))  # type: ignore[arg-type]
    code, out, err = await run_script(
        "ws_chat.py",
        "--url",
        base_url(client),
        "--session",
        "call-3",
        "--interrupt-after-ms",
        "0",
        stdin="发生了交通事故\n".encode(),
    )
    assert code == 0, err
    lines = out.splitlines()
    done = next(i for i, line in enumerate(lines) if line.startswith("[done]"))
    assert lines[done].split()[1] == "cancelled"
    assert re.fullmatch(r"\[ack\]\s+interrupt turn \w+: cancelled", lines[done + 1]), "the ack follows the done"
    texts = tagged(out, "text")
    assert texts and len("".join(texts)) < len(GREETING), "the reply was cut short"
    transcript = out.split("--- transcript", 1)[1]
    assert f"(cancelled; heard: '{''.join(texts)}')" in transcript


async def test_ws_chat_exits_non_zero_and_stops_on_an_error(make_client: Any) -> None:
    client = await make_client(Settings(**FAILING))  # type: ignore[arg-type]
    code, out, _ = await run_script("ws_chat.py", "--url", base_url(client), stdin="喂\n方便\n".encode())
    assert code == 1
    (error,) = tagged(out, "error")
    assert error.startswith("upstream_timeout (504)")
    assert tagged(out, "caller") == ["喂"], "the call stops at the failed turn"
    assert tagged(out, "stage")[-1].startswith("0001"), "the fallback stage"
    assert "error: upstream_timeout" in out.split("--- transcript", 1)[1]


async def test_ws_chat_reports_a_refused_start(client: Any) -> None:
    code, out, err = await run_script("ws_chat.py", "--url", base_url(client), "--session", "bad id", stdin=b"")
    assert code == 1 and "start refused" in err
    assert tagged(out, "error")[0].startswith("invalid_request (422) in reply to start")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
async def test_ws_chat_interactive_on_a_terminal(client: Any) -> None:
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "scripts.ws_chat",
            "--url",
            base_url(client),
            "--session",
            "tty-1",
            stdin=slave,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        seen: list[str] = []

        async def until(prefix: str) -> None:
            async with asyncio.timeout(15):
                while not (seen and seen[-1].startswith(prefix)):
                    line = await proc.stdout.readline()  # type: ignore[union-attr]
                    assert line, f"ws_chat ended before {prefix}: {seen}"
                    seen.append(line.decode().rstrip("\n"))

        await until("[ack]")
        os.write(master, "发生了交通事故\n".encode())
        await until("[done]")
        os.write(master, b"/get\n/quit\n")
        await until("[info]")
        async with asyncio.timeout(10):
            out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert "--- transcript" not in out.decode(), "no transcript in interactive mode"
        assert [line.split()[1] for line in seen if line.startswith("[stage]")] == ["1002"]
    finally:
        os.close(master)
        os.close(slave)
