"""The canary-key scan: the FastGPT keys the tests plant must never leave callagent.

Every byte callagent's HTTP server sends (headers, bodies, SSE frames, WebSocket messages),
every log line (structlog, including ``capture_logs``; the standard library's loggers, with
tracebacks) and the output of every callagent process a test starts is scanned for the
planted keys. ``conftest`` installs the scan once per run and fails the test that leaked.

The scan observes aiohttp's response and WebSocket writers and the logging pipeline; it
changes nothing they do. Only responses of a callagent app are scanned: the FastGPT
emulator legitimately sees the key (it checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from structlog.testing import LogCapture

from callagent.web.keys import SETTINGS

CANARY_KEY = "fastgpt-canary-1b9e4c07d2"
"""The FastGPT API key planted in the shared test settings and the emulator."""
PLANTED = (CANARY_KEY, "fastgpt-test")  # the second: the key of tests that start their own emulator


class Leaks:
    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = tuple(keys)
        self._encoded = tuple(k.encode() for k in self.keys)
        self.found: list[str] = []
        self.process_logs: list[Path] = []

    def check(self, where: str, data: Any) -> None:
        if isinstance(data, memoryview | bytearray):
            data = bytes(data)
        if isinstance(data, bytes):
            hit = any(k in data for k in self._encoded)
        else:
            text = str(data)
            hit = any(k in text for k in self.keys)
        if hit:
            self.found.append(f"{where}: {str(data)[:300]}")

    def check_process_logs(self) -> None:
        for path in self.process_logs:
            if path.exists():
                self.check(f"process output {path.name}", path.read_bytes())
        self.process_logs.clear()

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return found


def _is_callagent(request: web.BaseRequest | None) -> bool:
    return isinstance(request, web.Request) and SETTINGS in request.app


def install(leaks: Leaks) -> None:
    """Observe every response, WebSocket message and log line of the process from now on."""
    _observe_http(leaks)
    _observe_logs(leaks)


def _observe_http(leaks: Leaks) -> None:
    start, write, write_eof = web.StreamResponse._start, web.StreamResponse.write, web.StreamResponse.write_eof

    async def observed_start(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        if _is_callagent(request):
            leaks.check(f"response headers {request.path}", dict(self.headers))
        return await start(self, request)

    async def observed_write(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        if _is_callagent(self._req):
            leaks.check("response body", data)
        await write(self, data)

    async def observed_write_eof(self: web.StreamResponse, data: bytes = b"") -> None:
        if _is_callagent(self._req):
            leaks.check("response body", data)  # a web.Response passes its whole body here
        await write_eof(self, data)

    send_str, send_bytes = web.WebSocketResponse.send_str, web.WebSocketResponse.send_bytes

    async def observed_send_str(self: web.WebSocketResponse, data: str, compress: int | None = None) -> None:
        leaks.check("websocket message", data)
        await send_str(self, data, compress)

    async def observed_send_bytes(self: web.WebSocketResponse, data: bytes, compress: int | None = None) -> None:
        leaks.check("websocket message", data)
        await send_bytes(self, data, compress)

    web.StreamResponse._start = observed_start  # type: ignore[method-assign]
    web.StreamResponse.write = observed_write  # type: ignore[method-assign]
    web.StreamResponse.write_eof = observed_write_eof  # type: ignore[method-assign]
    web.WebSocketResponse.send_str = observed_send_str  # type: ignore[method-assign]
    web.WebSocketResponse.send_bytes = observed_send_bytes  # type: ignore[method-assign]


def _observe_logs(leaks: Leaks) -> None:
    def scan(logger: Any, method: str, event_dict: Any) -> Any:
        leaks.check(f"log {method}", event_dict)
        return event_dict

    structlog.configure(processors=[scan, *structlog.get_config()["processors"]])
    captured = LogCapture.__call__

    def observed_capture(self: LogCapture, logger: Any, method: str, event_dict: Any) -> Any:
        leaks.check(f"log {method}", event_dict)
        return captured(self, logger, method, event_dict)

    LogCapture.__call__ = observed_capture  # type: ignore[method-assign]

    class Scan(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            leaks.check(f"log {record.name}", self.format(record))

    logging.getLogger().addHandler(Scan(logging.DEBUG))
