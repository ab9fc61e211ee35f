"""The OpenAI Chat Completions wire format: chunks, completions, errors.

One ``CompletionEncoder`` per request. A streamed reply is ``data: <chat.completion.chunk>``
lines: the role first, then content pieces, then an optional tool call (``index`` 0, its ``id``
and name in the first delta, the JSON arguments in the second), then the final chunk with
``finish_reason`` and callagent's extension object, the usage chunk when asked for, and
``data: [DONE]``. ``completion`` folds the same reply into one ``chat.completion`` object.

Errors use OpenAI's body, ``{"error": {"message", "type", "code"}}``, and say
``x-should-retry: false``: the official SDKs retry any 5xx by default, and a retried request
would repeat the caller's turn.

Usage figures count characters (callagent runs no tokenizer): prompt = the caller's
utterance, completion = the reply text.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..errors import CallagentError
from ..events import dumps

DONE_LINE = b"data: [DONE]\n\n"
NO_RETRY = {"x-should-retry": "false"}


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status < 500:
        return "invalid_request_error"
    return "api_error"


def error_body(error: CallagentError) -> dict[str, Any]:
    return {"error": {"message": error.msg, "type": error_type(error.status), "param": None, "code": error.type}}


def error_response(error: CallagentError) -> web.Response:
    return web.json_response(error_body(error), status=error.status, dumps=dumps, headers=NO_RETRY)


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": dumps(self.arguments)}}


@dataclass(slots=True)
class Reply:
    """What a completion says: text, an optional tool call, callagent's extension, usage."""

    text: list[str] = field(default_factory=list)
    tool_call: ToolCall | None = None
    turn_id: str | None = None
    stage_code: str = ""
    stage: str = ""
    stage_codes: list[str] = field(default_factory=list)
    prompt_chars: int = 0

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call is not None else "stop"

    def extension(self) -> dict[str, Any]:
        return {
            "turnId": self.turn_id,
            "stageCode": self.stage_code,
            "stage": self.stage,
            "stageCodes": self.stage_codes,
        }

    def usage(self) -> dict[str, int]:
        completion = sum(map(len, self.text))
        return {
            "prompt_tokens": self.prompt_chars,
            "completion_tokens": completion,
            "total_tokens": self.prompt_chars + completion,
        }


class CompletionEncoder:
    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def tool_call(self, call: ToolCall) -> bytes:
        """The call in two deltas, as OpenAI streams it: id and name, then the arguments."""
        head = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        args = {"index": 0, "function": {"arguments": dumps(call.arguments)}}
        return self._chunk({"tool_calls": [head]}) + self._chunk({"tool_calls": [args]})

    def final(self, reply: Reply) -> bytes:
        return self._chunk({}, reply.finish_reason, callagent=reply.extension())

    def usage(self, reply: Reply) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": reply.usage(),
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def in_band_error(self, error: CallagentError) -> bytes:
        """An error after the stream started (the SDKs raise it as ``APIError``)."""
        return b"data: " + orjson.dumps(error_body(error)) + b"\n\n"

    def completion(self, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.text) or None, "refusal": None}
        if reply.tool_call is not None:
            message["tool_calls"] = [reply.tool_call.message()]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": reply.usage(),
            "callagent": reply.extension(),
        }
