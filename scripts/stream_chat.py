"""Send one caller utterance to callagent and print the streamed reply as it arrives.

``POST /chat?stream=true``, then one line per server-sent event, the moment it arrives::

    $ python -m scripts.stream_chat a1002 发生了交通事故
    stage_code {"nextStageCode":"1002","nextStage":"通话中","turnId":"95e830675b634a0b","seq":1}
    text_delta {"text":"您好，这里是","turnId":"95e830675b634a0b","seq":2}
    ...
    done {"status":"completed","latency":{...},"turnId":"95e830675b634a0b","seq":7}

Each line is the event name, a blank, then the event's ``data`` JSON exactly as received.
Keep-alive comments (``: ping``) are shown only with ``--pings``.

Exit status: 0 when the turn ended with ``done`` (``completed`` or ``cancelled``), 1 on an
``error`` event, an HTTP error (its JSON body is printed as an ``error`` line), a stream that
ended without a terminal event, or a connection failure; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

import aiohttp

from callagent.sse import COMMENT, SSEEvent, SSEParser

from .cli import run_client, utterance_body, utterance_parser

TERMINAL = ("done", "error")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = utterance_parser("POST /chat?stream=true to callagent and print each SSE event as it arrives.")
    parser.add_argument(
        "--segment",
        choices=["none", "clause"],
        default="none",
        help="clause: text_delta events carry whole clauses for speech synthesis",
    )
    parser.add_argument("--pings", action="store_true", help="also print the keep-alive comments")
    return parser.parse_args(argv)


async def sse_events(response: aiohttp.ClientResponse, pings: bool = False) -> AsyncIterator[tuple[str, str]]:
    """(event, data) per SSE event as it arrives (callagent's reader, no line length limit);
    comments as ("", ": ping") if ``pings``."""
    parser = SSEParser(comments=pings)
    async for block in response.content.iter_any():
        for event in parser.feed(block):
            yield _text(event)
    for event in parser.finish():
        yield _text(event)


def _text(event: SSEEvent) -> tuple[str, str]:
    if event.event == COMMENT:
        return "", event.data.decode()
    return (event.event or b"message").decode(), event.data.decode()


async def run(args: argparse.Namespace) -> int:
    body = utterance_body(args)
    params = {"stream": "true"}
    if args.segment != "none":
        params["segment"] = args.segment
    headers = {"Accept": "text/event-stream"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    url = args.url.rstrip("/") + "/chat"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=body, params=params, headers=headers) as response,
    ):
        if response.status != 200 or not response.content_type.startswith("text/event-stream"):
            print(f"stream_chat: HTTP {response.status}", file=sys.stderr)
            print(f"error {(await response.text()).strip()}", flush=True)
            return 1
        async for event, data in sse_events(response, args.pings):
            print(f"{event} {data}" if event else data, flush=True)
            if event in TERMINAL:
                return 1 if event == "error" else 0
    print("stream_chat: the stream ended without a done or error event", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    return run_client("stream_chat", run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
