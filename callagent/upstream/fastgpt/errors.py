"""The one edge where FastGPT's failures become callagent's typed errors.

FastGPT reports a failure in several shapes, depending on the release and on how far the
request got: an HTTP error status with a JSON envelope (4.8.18+: HTTP 500 for every error;
4.14.11+: a 4xx business code with that status), HTTP 200 with a failing envelope (older
builds), one ``event: error`` frame behind HTTP 200 (a stream refused before any output),
an ``error`` frame mid-stream, or plain JSON such as a request-validation 400 or a team
rate-limit 429. Every one of them goes through ``error_from`` or ``error_from_body``; the
code in the payload wins over the HTTP status, which is only a hint on the newer releases.
"""

from __future__ import annotations

from typing import Any

import orjson

from ...errors import (
    UpstreamAuth,
    UpstreamBusy,
    UpstreamError,
    UpstreamQuota,
    UpstreamRateLimited,
    UpstreamRejected,
)
from ...sse import SSEParser

AUTH_CODES = frozenset({401, 403, 514, 502000, 502001, 504000, 506000, 506001, 506002})
"""unAuthorization, unAuthApiKey, appUnExist, unAuthApp, unAuthChat, the API-key errors (commercial)."""
CHAT_IS_GENERATING = 504001
QUOTA_CODES = frozenset({510})
QUOTA_STATUS_TEXTS = frozenset({"insufficientQuota", "aiPointsNotEnough"})
_MESSAGE_CHARS = 200


def error_from(status: int, payload: Any) -> UpstreamError:
    """The error for an HTTP status and the JSON FastGPT sent with it (envelope or error frame)."""
    code, status_text, message = _fields(payload)
    which = code if code not in (None, 200) else status
    said = message or status_text
    if which in AUTH_CODES or status in (401, 403):
        return UpstreamAuth(f"FastGPT refused the request: {said or f'HTTP {status}'}")
    if which == CHAT_IS_GENERATING:
        return UpstreamBusy("FastGPT is still running the previous turn of this chat")
    if 429 in (which, status):
        return UpstreamRateLimited(f"FastGPT is rate limiting the team: {said or 'HTTP 429'}")
    if which in QUOTA_CODES or status_text in QUOTA_STATUS_TEXTS:
        return UpstreamQuota(f"FastGPT's team is out of credit: {said or status_text}")
    if 400 in (which, status):
        return UpstreamRejected(f"FastGPT refused the request as invalid: {said or 'HTTP 400'}")
    if said:
        return UpstreamError(f"FastGPT: {said}")
    return UpstreamError(f"FastGPT answered HTTP {status}")


def error_from_body(status: int, raw: bytes) -> UpstreamError:
    """A body where a stream or an envelope was expected: JSON, or a lone ``event: error`` frame."""
    payload = _loads(raw)
    if payload is None:
        parser = SSEParser()
        for event in [*parser.feed(raw), *parser.finish()]:
            payload = _loads(event.data)
            break
    return error_from(status, payload)


def _fields(payload: Any) -> tuple[int | None, str, str]:
    if not isinstance(payload, dict):
        return None, "", ""
    code = payload.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    status_text = payload.get("statusText")
    message = payload.get("message")
    return (
        code if isinstance(code, int) else None,
        status_text if isinstance(status_text, str) else "",
        message[:_MESSAGE_CHARS] if isinstance(message, str) else "",
    )


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
