"""A softphone for callagent's WebSocket API: type what the caller says, watch what comes back.

Interactive (stdin is a terminal)::

    $ python -m scripts.ws_chat --session demo-1
    发生了交通事故
    [stage]  1002 通话中
    [text]   您好，这里是
    [text]   交通事故快处
    ...
    [done]   completed  first text 0 ms, total 202 ms

Each line typed is one caller utterance (a ``chat`` message); events are printed the moment
they arrive, one line each: ``[stage]`` for stage codes, ``[text]`` for text to speak,
``[done]`` / ``[error]`` when a turn ends, ``[ack]``, ``[info]``, ``[pong]`` for replies.
A new utterance while the agent is still answering barges in (the server cancels the running
turn). Commands:

    /interrupt [spoken text]  the caller barged in; optional: what they heard of the reply
    /set KEY VALUE            set_info (VALUE is the rest of the line, a string)
    /get [KEY]                get_info (all variables without KEY)
    /undo                     delete_last_turn
    /silence                  an empty utterance (the caller said nothing)
    /ping                     ping, answered by pong
    /quit                     hang up (also end of input)

Script mode (``--script FILE``, or stdin that is not a terminal): one utterance or command per
line (blank lines and ``#`` comments skipped); each line waits for the previous turn's
``done``/``error`` (and a command for its reply) before it is sent, like a caller who waits for
the answer. At the end a transcript of the call is printed. The exit status is 1 if a turn
failed (``error``), a request was refused, a turn did not end within ``--turn-timeout`` or the
server closed the socket; the script stops at the first such problem.

``--interrupt-after-ms N`` simulates a barge-in on every turn: N ms after the turn's first
``text_delta`` an ``interrupt`` is sent, with the text received so far as ``spokenText``.

Exit status: 0 on success, 1 as above (or a connection failure), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .cli import add_server_options, run_client

HELP = (
    "type what the caller says; commands: /interrupt [spoken text], /set KEY VALUE, /get [KEY], "
    "/undo, /silence, /ping, /quit"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Interactive WebSocket client for callagent (GET /ws): a softphone in a terminal.",
        epilog=HELP,
    )
    add_server_options(parser)
    parser.add_argument("--session", help="the call's sessionId (default: a random one)")
    parser.add_argument(
        "--segment",
        choices=["none", "clause"],
        default="none",
        help="clause: text_delta messages carry whole clauses for speech synthesis",
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a session variable sent with `start` (repeatable)",
    )
    parser.add_argument(
        "--interrupt-after-ms",
        type=int,
        metavar="N",
        help="barge in on every turn: send `interrupt` N ms after its first text_delta",
    )
    parser.add_argument("--script", metavar="FILE", help="play a whole call: one utterance (or command) per line")
    parser.add_argument(
        "--turn-timeout",
        type=float,
        default=60.0,
        help="script mode: seconds to wait for a turn or a reply (default %(default)s)",
    )
    parser.add_argument("--raw", action="store_true", help="print every message received as raw JSON")
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours (default: colours on a terminal)")
    args = parser.parse_args(argv)
    if args.interrupt_after_ms is not None and args.interrupt_after_ms < 0:
        parser.error("--interrupt-after-ms must be >= 0")
    for item in args.var:
        if "=" not in item or not item.partition("=")[0]:
            parser.error(f"--var {item!r}: expected KEY=VALUE")
    return args


# -- output --------------------------------------------------------------------------------

COLORS = {"stage": "1;33", "text": "32", "done": "36", "error": "1;31", "caller": "1", "closed": "35"}


class Printer:
    def __init__(self, color: bool) -> None:
        self.color = color

    def line(self, tag: str, text: str) -> None:
        label = f"[{tag}]"
        if self.color and tag in COLORS:
            label = f"\033[{COLORS[tag]}m{label}\033[0m" + " " * max(0, 8 - len(label))
        else:
            label = f"{label:<8}"
        print(f"{label} {text}", flush=True)


def ms(value: Any) -> str:
    return "-" if value is None else f"{value:g} ms"


def error_text(msg: dict[str, Any]) -> str:
    where = f" in reply to {msg['replyTo']}" if msg.get("replyTo") else ""
    return f"{msg.get('error', '?')} ({msg.get('code', '?')}){where}: {msg.get('msg', '')}"


# -- the call --------------------------------------------------------------------------------


@dataclass
class TurnView:
    """One turn as the gateway sees it."""

    id: str
    caller: str
    ended: asyncio.Future[None]
    stages: list[tuple[str, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    status: str | None = None  # completed | cancelled | failed | lost
    error: dict[str, Any] | None = None
    heard: str | None = None  # spokenText sent with an interrupt
    interrupt_timer: asyncio.TimerHandle | None = None
    interrupt_ack: asyncio.Future[dict[str, Any]] | None = None

    async def finished(self) -> None:
        """The terminal event arrived, and the ack of an interrupt sent for the turn."""
        await self.ended
        if self.interrupt_ack is not None:
            with contextlib.suppress(ConnectionError):
                await self.interrupt_ack


class Refused(Exception):
    """The server answered a request with an ``error`` message."""


class Softphone:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, args: argparse.Namespace, printer: Printer) -> None:
        self.ws = ws
        self.args = args
        self.out = printer
        self.loop = asyncio.get_running_loop()
        self.turns: dict[str, TurnView] = {}
        self.calls: list[TurnView] = []  # in order, for the transcript
        self.pending: dict[str, deque[asyncio.Future[dict[str, Any]]]] = {}
        self.failed = False
        self.closed_by_server = False
        self.quitting = False
        self.reader: asyncio.Task[None] | None = None

    # -- sending ---------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg, ensure_ascii=False))

    def expect(self, kind: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next reply to a request of ``kind`` (replies come in order)."""
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        # Interactive commands are not awaited: mark their failures as seen.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self.ws.closed:
            future.set_exception(ConnectionError("the socket is closed"))
        else:
            self.pending.setdefault(kind, deque()).append(future)
        return future

    async def request(self, kind: str, msg: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        future = self.expect(kind)
        await self.send({"type": kind, **msg})
        return future

    async def chat(self, text: str) -> TurnView:
        turn = TurnView(id=uuid.uuid4().hex[:16], caller=text, ended=self.loop.create_future())
        self.turns[turn.id] = turn
        self.calls.append(turn)
        await self.send({"type": "chat", "text": text, "turnId": turn.id})
        return turn

    def schedule_interrupt(self, turn: TurnView) -> None:
        delay = self.args.interrupt_after_ms / 1000

        def fire() -> None:
            turn.interrupt_timer = None
            if turn.ended.done():
                return
            turn.heard = "".join(turn.text)
            turn.interrupt_ack = self.expect("interrupt")
            msg = {"type": "interrupt", "turnId": turn.id, "spokenText": turn.heard}
            task = asyncio.ensure_future(self.send(msg))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

        turn.interrupt_timer = self.loop.call_later(delay, fire)

    # -- receiving -------------------------------------------------------------------------

    async def read_loop(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        self.on_message(json.loads(msg.data))
                    except (ValueError, TypeError, KeyError) as e:
                        self.out.line("error", f"unreadable message ({e}): {msg.data[:200]}")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            self.on_closed()

    def on_closed(self) -> None:
        if not self.quitting:
            self.closed_by_server = True
            code = self.ws.close_code
            reason = f"code {code}" if code is not None else "connection lost"
            self.out.line("closed", f"the server closed the socket ({reason})")
        for turn in self.turns.values():
            if turn.interrupt_timer is not None:
                turn.interrupt_timer.cancel()
            if not turn.ended.done():
                turn.status = turn.status or "lost"
                turn.ended.set_result(None)
        for queue in self.pending.values():
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_exception(ConnectionError("the socket closed before the reply"))

    def resolve(self, kind: str, msg: dict[str, Any], error: bool = False) -> None:
        queue = self.pending.get(kind)
        while queue:
            future = queue.popleft()
            if not future.done():
                if error:
                    future.set_exception(Refused(error_text(msg)))
                else:
                    future.set_result(msg)
                return

    def on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if self.args.raw:
            print(json.dumps(msg, ensure_ascii=False), flush=True)
        turn_id = msg.get("turnId")
        turn = self.turns.get(turn_id) if isinstance(turn_id, str) else None
        if kind == "stage_code":
            code, name = msg.get("nextStageCode", ""), msg.get("nextStage", "")
            if turn is not None:
                turn.stages.append((code, name))
            self.show("stage", f"{code} {name}".rstrip())
        elif kind == "text_delta":
            if turn is not None:
                first = not turn.text
                turn.text.append(msg.get("text", ""))
                if first and self.args.interrupt_after_ms is not None:
                    self.schedule_interrupt(turn)
            self.show("text", msg.get("text", ""))
        elif kind == "done":
            latency = msg.get("latency") or {}
            detail = f"first text {ms(latency.get('first_text_ms'))}, total {ms(latency.get('total_ms'))}"
            self.show("done", f"{msg.get('status')}  {detail}")
            if turn is not None:
                self.end(turn, msg.get("status", "completed"))
        elif kind == "error":
            self.failed = True
            self.show("error", error_text(msg))
            if turn is not None:
                turn.error = msg
                self.end(turn, "failed")
            elif turn_id is None:
                self.on_refused(msg)
        elif kind == "ack":
            self.on_ack(msg)
        elif kind == "info":
            if "key" in msg:
                self.show("info", f"{msg['key']} = {json.dumps(msg.get('value'), ensure_ascii=False)}")
            else:
                self.show("info", json.dumps(msg.get("info"), ensure_ascii=False))
            self.resolve("get_info", msg)
        elif kind == "pong":
            self.show("pong", f"t={json.dumps(msg.get('t'), ensure_ascii=False)}")
            self.resolve("ping", msg)
        else:
            self.show("?", json.dumps(msg, ensure_ascii=False))

    def on_refused(self, msg: dict[str, Any]) -> None:
        reply_to = msg.get("replyTo")
        if reply_to == "chat":
            # A refused chat never started: it is the oldest one that has seen no event.
            for turn in self.calls:
                if not turn.ended.done() and not turn.stages and not turn.text:
                    turn.error = msg
                    self.end(turn, "failed")
                    break
        elif isinstance(reply_to, str):
            self.resolve(reply_to, msg, error=True)

    def on_ack(self, msg: dict[str, Any]) -> None:
        what = msg.get("for", "")
        if what == "interrupt":
            outcome = "cancelled" if msg.get("cancelled") else "not cancelled (no reply was running)"
            self.show("ack", f"interrupt turn {msg.get('turnId')}: {outcome}")
        elif what == "delete_last_turn":
            deleted = msg.get("turnId")
            self.show("ack", f"delete_last_turn: {'deleted turn ' + deleted if deleted else 'nothing to delete'}")
        elif what == "set_info":
            self.show("ack", f"set_info {msg.get('key')}")
        else:
            self.show("ack", f"{what} {msg.get('sessionId', '')}".rstrip())
        self.resolve(what, msg)

    def end(self, turn: TurnView, status: str) -> None:
        if turn.interrupt_timer is not None:
            turn.interrupt_timer.cancel()
            turn.interrupt_timer = None
        turn.status = status
        if not turn.ended.done():
            turn.ended.set_result(None)

    def show(self, tag: str, text: str) -> None:
        if not self.args.raw:
            self.out.line(tag, text)

    # -- commands --------------------------------------------------------------------------

    async def command(self, line: str) -> asyncio.Future[dict[str, Any]] | None:
        """Run a ``/command``; the future of its reply, or None (nothing to wait for)."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("quit", "exit", "q"):
            self.quitting = True
            return None
        if name == "interrupt":
            return await self.request("interrupt", {"spokenText": rest} if rest else {})
        if name == "set":
            key, _, value = rest.partition(" ")
            if not key:
                print("usage: /set KEY VALUE", file=sys.stderr)
                return None
            return await self.request("set_info", {"key": key, "value": value.strip()})
        if name == "get":
            return await self.request("get_info", {"key": rest} if rest else {})
        if name == "undo":
            return await self.request("delete_last_turn", {})
        if name == "ping":
            return await self.request("ping", {"t": round(time.time() * 1000)})
        print(f"unknown command /{name}: {HELP}", file=sys.stderr)
        return None

    # -- the two ways to drive a call ------------------------------------------------------

    async def interactive(self, lines: AsyncIterator[str]) -> int:
        async for raw in lines:
            if self.ws.closed:
                break
            line = raw.strip()
            if line == "/silence":
                await self.chat("")
            elif line.startswith("/") and len(line) > 1:
                await self.command(line)
                if self.quitting:
                    break
            elif line:
                await self.chat(line)
        await self.settle()
        return 1 if self.closed_by_server else 0

    async def settle(self, grace: float = 2.0) -> None:
        """Give the replies to requests already sent a moment to arrive before hanging up."""
        waiting = [f for queue in self.pending.values() for f in queue if not f.done()]
        if waiting and not self.ws.closed:
            await asyncio.wait(waiting, timeout=grace)

    async def play(self, lines: AsyncIterator[str], echo: bool = True) -> int:
        timeout = self.args.turn_timeout
        ok = True
        async for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if self.ws.closed:
                ok = False
                break
            try:
                if line.startswith("/") and line != "/silence":
                    if echo:
                        self.out.line("caller", line)
                    reply = await self.command(line)
                    if self.quitting:
                        break
                    if reply is not None:
                        await asyncio.wait_for(reply, timeout)
                    continue
                text = "" if line == "/silence" else line
                if echo:
                    self.out.line("caller", text or "(silence)")
                turn = await self.chat(text)
                await asyncio.wait_for(turn.finished(), timeout)
                if turn.status not in ("completed", "cancelled"):
                    ok = False
                    break
            except TimeoutError:
                print(f"ws_chat: no answer within {timeout:g}s", file=sys.stderr)
                ok = False
                break
            except (Refused, ConnectionError) as e:
                print(f"ws_chat: {e}", file=sys.stderr)
                ok = False
                break
        self.print_transcript()
        return 0 if ok and not self.failed and not self.closed_by_server else 1

    def print_transcript(self) -> None:
        print(f"--- transcript of session {self.args.session} ---", flush=True)
        for turn in self.calls:
            print(f"caller: {turn.caller or '(silence)'}")
            stage = " ".join(f"{code} {name}".rstrip() for code, name in turn.stages[-1:]) or "no stage"
            notes = []
            if turn.status != "completed":
                notes.append(turn.status or "unfinished")
            if turn.heard is not None:
                notes.append(f"heard: {turn.heard!r}")
            if turn.error is not None:
                notes.append(f"error: {turn.error.get('error')}")
            suffix = f"  ({'; '.join(notes)})" if notes else ""
            print(f"agent:  [{stage}] {''.join(turn.text)}{suffix}")
        print("---", flush=True)


# -- input -----------------------------------------------------------------------------------


async def file_lines(lines: Iterable[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin, read by a daemon thread so the event loop never blocks on them.

    A daemon thread rather than ``asyncio.to_thread``: the default executor would keep
    the process waiting at exit for a ``readline`` that only returns on the next Enter.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: we are exiting
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        try:
            for line in sys.stdin:
                put(line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        put(None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


# -- main ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, script: list[str] | None) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    color = not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    printer = Printer(color)
    interactive = script is None and sys.stdin.isatty()

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(args.url.rstrip("/") + "/ws", headers=headers, autoping=True) as ws,
    ):
        phone = Softphone(ws, args, printer)
        phone.reader = asyncio.create_task(phone.read_loop(), name="ws-reader")
        start: dict[str, Any] = {"sessionId": args.session}
        if args.segment != "none":
            start["segment"] = args.segment
        if args.var:
            start["variables"] = dict(item.split("=", 1) for item in args.var)
        try:
            try:
                await asyncio.wait_for(await phone.request("start", start), 10)
            except (Refused, ConnectionError, TimeoutError) as e:
                print(f"ws_chat: start refused: {e}", file=sys.stderr)
                return 1
            if interactive:
                print(f"session {args.session}: {HELP}", file=sys.stderr)
                code = await phone.interactive(stdin_lines())
            elif script is not None:
                code = await phone.play(file_lines(script))
            else:
                code = await phone.play(stdin_lines())
        finally:
            phone.quitting = True
            await ws.close()
            await phone.reader
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.session = args.session or f"ws-{uuid.uuid4().hex[:12]}"
    script: list[str] | None = None
    if args.script:
        try:
            with open(args.script, encoding="utf-8") as f:
                script = f.read().splitlines()
        except OSError as e:
            print(f"ws_chat: cannot read the script: {e}", file=sys.stderr)
            return 2
    return run_client("ws_chat", run(args, script))


if __name__ == "__main__":
    sys.exit(main())
