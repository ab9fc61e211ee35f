"""Test helpers: a real ``redis-server`` (and other processes) on free loopback ports.

Each ``RedisServer`` is a ``redis-server`` subprocess without persistence; it can be stopped
and started again on the same port (the outage tests). Readiness is polled with a deadline
over a plain socket, so nothing here depends on the client under test.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command in RESP, return the raw first reply line (``+PONG``, ``:1``...)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


class RedisServer:
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
        self.port = port or free_port()
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                if command(self.port, "PING") == b"+PONG":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {self.log_tail()}")
            time.sleep(0.01)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def flush(self) -> None:
        command(self.port, "FLUSHALL")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not go in time; always reaped."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


PROCESS_LOGS: list[Path] = []
"""Output files of the processes started by the current test."""


def start_process(args: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """A subprocess whose output goes to ``log_path`` (a pipe nobody reads would block it).
    The output is scanned for planted keys when the test ends (tests/canary.py)."""
    PROCESS_LOGS.append(log_path)
    with log_path.open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)


def wait_for_http(port: int, path: str, process: subprocess.Popen[Any], deadline: float = START_DEADLINE) -> None:
    """Poll ``GET path`` on the loopback port until it answers 200, the process dies, or time is up."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        if time.monotonic() > give_up:
            raise RuntimeError(f"nothing answered GET {path} on port {port} within {deadline:g}s")
        time.sleep(0.02)
