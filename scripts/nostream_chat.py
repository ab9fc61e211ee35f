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
import json
import sys
from typing import Any

import aiohttp

from .cli import run_client, utterance_body, utterance_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return utterance_parser("POST /chat to callagent and print the JSON reply.").parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    body = utterance_body(args)
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
    return run_client("nostream_chat", run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
