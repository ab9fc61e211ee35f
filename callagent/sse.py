"""One incremental Server-Sent Events reader, for every SSE stream callagent reads.

The upstream clients (FastGPT, Dify, OpenAI-compatible servers), the client scripts, the
benchmark and the tests all read SSE through ``SSEParser`` (feed it bytes as they arrive,
take whole events out) or ``read_events`` (the same over an aiohttp response).

It follows the WHATWG event-stream rules that matter on the wire: LF, CRLF and lone CR
line ends (also split across reads), ``:`` comment lines (keep-alives) skipped, a space
after the colon dropped, several ``data:`` lines joined with LF, an event dispatched on its
blank line, a block without ``data`` never dispatched. Two lenient rules for real servers:
a last event with no blank line before EOF is dispatched (``finish``), and ``id:`` and
``retry:`` are ignored, since no reader here reconnects.

Event names and data stay bytes: the clients decode JSON with orjson straight from bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import aiohttp

MAX_LINE_BYTES = 8 * 1024 * 1024
COMMENT = b":"
"""The ``event`` of a comment line, when the parser is asked to keep them."""


class SSEEvent(NamedTuple):
    event: bytes | None  # None: no ``event:`` line (the spec's default "message")
    data: bytes


_event = tuple.__new__
"""``SSEEvent(event, data)`` without the Python frame a NamedTuple's constructor adds: one per
event of every upstream reply."""


class SSEError(ValueError):
    """The byte stream is not an event stream a reader can follow (an overlong line)."""


class SSEParser:
    """``comments=True`` also returns each comment line, in order, as ``SSEEvent(COMMENT, line)``
    (a client showing keep-alives); otherwise comments are skipped."""

    __slots__ = ("_comments", "_data", "_event", "_max_line", "_pending", "_skip_lf")

    def __init__(self, max_line: int = MAX_LINE_BYTES, *, comments: bool = False) -> None:
        self._comments = comments
        self._pending = b""  # an incomplete line
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._skip_lf = False  # the last block ended in CR: an LF starting the next is its CRLF
        self._max_line = max_line

    def feed(self, block: bytes) -> list[SSEEvent]:
        """The events this block completes, in order."""
        if self._skip_lf:
            self._skip_lf = False
            if block.startswith(b"\n"):
                block = block[1:]
        if b"\r" in block:
            self._skip_lf = block.endswith(b"\r")
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._pending:
            block = self._pending + block
        lines = block.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self._max_line:
            raise SSEError(f"an event-stream line longer than {self._max_line} bytes")
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(_event(SSEEvent, (self._event, b"\n".join(self._data))))
                    self._data = []
                self._event = None
            elif self._comments and line.startswith(b":"):
                events.append(SSEEvent(COMMENT, line))
            else:
                self._line(line)
        return events

    def finish(self) -> list[SSEEvent]:
        """At EOF: the last event, when the stream ended without its blank line."""
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        events = [SSEEvent(self._event, b"\n".join(self._data))] if self._data else []
        self._data = []
        self._event = None
        return events

    def _line(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if not name:
            return  # a comment
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value or None


async def read_events(
    response: aiohttp.ClientResponse,
    max_line: int = MAX_LINE_BYTES,
    failed: Callable[[Exception], Exception] | None = None,
) -> AsyncIterator[SSEEvent]:
    """The events of an SSE response body, each as soon as its blank line arrived.

    Transport failures propagate as aiohttp / OS errors and a bad stream as ``SSEError``, or,
    with ``failed``, as what it makes of them: a client maps them to its own errors at its edge
    here, in the one generator every chunk of an upstream reply passes through.
    """
    parser = SSEParser(max_line)
    content = response.content
    while True:
        try:
            block = await content.readany()  # b"" only at the end of the body
            events = parser.feed(block) if block else parser.finish()
        except (SSEError, aiohttp.ClientError, ConnectionError) as e:
            if failed is None:
                raise
            raise failed(e) from None
        for event in events:
            yield event
        if not block:
            return
