"""Send one caller utterance to callagent and print the whole JSON reply.

``POST /chat`` (no streaming): the reply is printed pretty, non-ASCII unescaped::

    $ python -m scripts.nostream_chat a1002 发生了交通事故
    {
      "code": "200",
      "msg": "success",
      "sessionId": "a1002",
      ...
      "nextStageCode": "1002",
      "nextStage": "通话中",
      "text": "您好，这里是交通事故快处服务。请问现场有人受伤吗？",
      "status": "completed",
      ...
    }

Exit status: 0 for a reply with ``status`` ``completed`` or ``cancelled``; 1 for an HTTP
error (its JSON error body is printed), a ``failed`` turn (the reply carries the fallback
and an ``error`` object) or a connection failure; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="POST /chat to callagent and print the JSON reply.")
    parser.add_argument("session_id", metavar="sessionId", help="the call's id (1-128 of A-Z a-z 0-9 _ . : -)")
    parser.add_argument("text", nargs="+", help="what the caller said (several words are joined by blanks)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="callagent base URL (default %(default)s)")
    parser.add_argument("--api-key", help="sent as `Authorization: Bearer <key>`")
    parser.add_argument("--time-stamp", help="the request's timeStamp (default: now, YYYYMMDDhhmmss)")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    body = {
        "sessionId": args.session_id,
        "timeStamp": args.time_stamp or time.strftime("%Y%m%d%H%M%S"),
        "text": " ".join(args.text),
    }
    headers = {}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(args.url.rstrip("/") + "/chat", json=body, headers=headers) as response,
    ):
        raw = await response.text(encoding="utf-8")
        try:
            reply: Any = json.loads(raw)
        except ValueError:
            print(f"nostream_chat: HTTP {response.status}, not JSON: {raw[:500]}", file=sys.stderr)
            return 1
    print(json.dumps(reply, ensure_ascii=False, indent=2), flush=True)
    if response.status != 200:
        print(f"nostream_chat: HTTP {response.status}", file=sys.stderr)
        return 1
    return 1 if isinstance(reply, dict) and reply.get("status") == "failed" else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except aiohttp.ClientError as e:
        print(f"nostream_chat: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
