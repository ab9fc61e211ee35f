"""The one SSE reader: any split of the bytes gives the same events (WHATWG event-stream rules)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callagent.sse import SSEError, SSEEvent, SSEParser

STREAM = (
    b": keep-alive\n\n"
    b"event: answer\ndata: {\"a\":1}\n\n"
    b"data: line one\r\ndata:line two\r\n\r\n"
    b"event: error\rdata: x\r\r"
    b"id: 7\nretry: 100\nevent: flowNodeStatus\n\n"  # no data: never dispatched
    b"data: [DONE]"  # no blank line before EOF
)
EXPECTED = [
    SSEEvent(b"answer", b'{"a":1}'),
    SSEEvent(None, b"line one\nline two"),
    SSEEvent(b"error", b"x"),
    SSEEvent(None, b"[DONE]"),
]


def parse(blocks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for block in blocks for e in parser.feed(block)]
    return events + parser.finish()


def test_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted({0, len(STREAM), *cuts})
    blocks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert parse(blocks) == EXPECTED


def test_overlong_line_is_refused() -> None:
    parser = SSEParser(max_line=16)
    with pytest.raises(SSEError):
        parser.feed(b"data: " + b"x" * 32)
