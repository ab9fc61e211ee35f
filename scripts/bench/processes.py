"""Child processes on loopback (the FastGPT emulator, callagent instances), their CPU time and memory from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from .common import API_KEY, APP_ID, CHUNK_CHARS, HOST, READY_TIMEOUT, ROOT, progress


def host_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A child process serving HTTP on loopback; its CPU time and memory read from /proc."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.cwd = cwd or workdir
        self.argv = argv
        self.env = env
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.gc_path = workdir / f"{name}.gc.json"  # written by scripts.bench.gcwatch, when run under it
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def start(self, http: aiohttp.ClientSession, ready_path: str) -> None:
        """Spawn, then poll ``ready_path`` until the server answers (with a deadline)."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with http.get(self.base + ready_path, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)  # aiohttp's run_app shuts down cleanly on SIGINT
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if time.monotonic() - started > 2:
            progress(f"{self.name} took {time.monotonic() - started:.1f} s to stop")

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads)."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    async def gc_collections(self) -> int | None:
        """Garbage collections so far (all generations), from a process run under ``gcwatch``."""
        with contextlib.suppress(FileNotFoundError):
            self.gc_path.unlink()
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the handler runs between two bytecodes of the loop
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(sum(json.loads(self.gc_path.read_text())["collections"]))
            await asyncio.sleep(0.01)
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Lab:
    """The processes of a run: emulators and callagent instances, all stopped at the end."""

    def __init__(self, workdir: Path, loop: str) -> None:
        self.workdir = workdir
        self.loop = loop
        self.servers: list[Server] = []

    async def emulator(self, http: aiohttp.ClientSession, name: str, reply: str, chunk_delay: float) -> Server:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "scripts.emulators.fastgpt",
            "--host",
            HOST,
            "--port",
            str(port),
            "--chunk-chars",
            str(CHUNK_CHARS),
            "--chunk-delay",
            str(chunk_delay),
            "--api-key",
            API_KEY,
            "--app-id",
            APP_ID,
            "--reply",
            reply,
        ]
        # `python -m scripts.emulators.fastgpt` runs from the repository root.
        server = Server(name, argv, dict(os.environ), port, self.workdir, cwd=ROOT)
        self.servers.append(server)
        await server.start(http, "/__emulator/healthz")  # any answer (here a 404) means it is up
        return server

    async def callagent(
        self, http: aiohttp.ClientSession, name: str, upstream: Server, store: str, source: Path | None = None
    ) -> Server:
        """A callagent instance; ``source``: run the ``callagent`` package of that checkout instead."""
        port = free_port()
        env = dict(os.environ) | {
            "CALLAGENT_UPSTREAM": "fastgpt",
            "FASTGPT_BASE_URL": upstream.base,
            "FASTGPT_API_KEY": API_KEY,
            "FASTGPT_APP_ID": APP_ID,
            "CALLAGENT_STORE": store,
            "CALLAGENT_LOG_LEVEL": "warning",
            "CALLAGENT_LOG_FORMAT": "json",
            "CALLAGENT_API_KEYS": "",
        }
        if self.loop == "asyncio":
            env["CALLAGENT_UVLOOP"] = "false"
        server = Server(name, [], env, port, self.workdir)
        argv = ["callagent", "serve", "--host", HOST, "--port", str(port)]
        server.argv = [sys.executable, "-m", "scripts.bench.gcwatch", str(server.gc_path), *argv]
        # gcwatch is this checkout's; the callagent package is the one of ``source`` when given.
        paths = [str(source)] if source is not None else []
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, str(ROOT), env.get("PYTHONPATH")]))
        self.servers.append(server)
        await server.start(http, "/healthz")
        return server

    async def relay(self, http: aiohttp.ClientSession, name: str, upstream: Server) -> Server:
        """The bare relay (``scripts.bench.relay``), on the same event loop as callagent."""
        port = free_port()
        loop = "asyncio" if self.loop == "asyncio" else "uvloop"
        server = Server(name, [], dict(os.environ), port, self.workdir, cwd=ROOT)
        argv = ["scripts.bench.relay", "--upstream", upstream.base, "--host", HOST, "--port", str(port), "--loop", loop]
        server.argv = [sys.executable, "-m", "scripts.bench.gcwatch", str(server.gc_path), *argv]
        self.servers.append(server)
        await server.start(http, "/healthz")
        return server

    def retire(self, server: Server) -> None:
        server.stop()

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
