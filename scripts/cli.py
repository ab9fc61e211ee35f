"""What the command-line clients (``nostream_chat``, ``stream_chat``, ``ws_chat``) share.

The options that name the server and the caller's words, the request body of one utterance,
and how a client's run ends: its own exit status, or 1 with a one-line reason when the
server refused the socket or the network failed, or 130 on Ctrl-C, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="callagent base URL (default %(default)s)")
    parser.add_argument("--api-key", help="sent as `Authorization: Bearer <key>`")


def utterance_parser(description: str) -> argparse.ArgumentParser:
    """A parser for one utterance: ``sessionId text...``, the server options, ``--time-stamp``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("session_id", metavar="sessionId", help="the call's id (1-128 of A-Z a-z 0-9 _ . : -)")
    parser.add_argument("text", nargs="+", help="what the caller said (several words are joined by blanks)")
    add_server_options(parser)
    parser.add_argument("--time-stamp", help="the request's timeStamp (default: now, YYYYMMDDhhmmss)")
    return parser


def utterance_body(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sessionId": args.session_id,
        "timeStamp": args.time_stamp or time.strftime("%Y%m%d%H%M%S"),
        "text": " ".join(args.text),
    }


def run_client(name: str, client: Coroutine[Any, Any, int]) -> int:
    """Run a client to its exit status; a refused socket or a network failure is 1 with one line
    on stderr, Ctrl-C is 130."""
    try:
        return asyncio.run(client)
    except aiohttp.WSServerHandshakeError as e:
        print(f"{name}: the server refused the socket: HTTP {e.status} {e.message}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as e:
        print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
