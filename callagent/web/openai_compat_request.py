"""Decoding an OpenAI chat completions request into what callagent needs of it.

A voice platform sends the whole conversation every time. Of it callagent takes:

- the session (one session = one call): the first of the header ``X-Callagent-Session``, the
  header ``sessionid``, body ``session_id``, ``metadata.session_id`` / ``sessionId`` /
  ``call_id``, ``call.id`` (Vapi), ``extendData.instanceId`` (Tencent Cloud), ``user``. The
  callagent-specific sources must be valid session ids; a platform's own id that is not is
  mapped to ``h-<hash>``. Without any, the id is derived from the model and the conversation's
  first system and user messages (``conv-<hash>``): stable through the call, but two calls
  that open alike would share it, so it is logged as a warning.
- what to do: the last message is the caller's utterance (``user``: a turn), the result of a
  tool callagent called (``tool``: answered without a turn), or neither (an empty completion).
- what the caller heard of callagent's previous reply: the assistant messages after the
  previous ``user`` message, as the platform recorded them.
- the offered functions, ``stream``, ``stream_options.include_usage``, clause segmentation
  (header ``X-Callagent-Segment`` or ``metadata.segment``), and a fingerprint of the messages
  that tells a retried request from a new one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidRequest
from ..segment import SegmentOptions
from . import validation as v
from .openai_compat_tools import OfferedTool

SESSION_HEADERS = ("X-Callagent-Session", "sessionid")
MAX_MESSAGES = 2000


@dataclass(slots=True)
class ChatRequest:
    session_id: str
    session_source: str
    model: str
    kind: str  # "turn" | "tool_result" | "empty"; "replay" once known to be a retry of a completed turn
    utterance: str = ""
    previous_utterance: str | None = None  # the user message before this one
    heard: str | None = None  # callagent's previous reply as the platform recorded it
    tool_name: str | None = None  # the function whose result this request carries
    tools: list[OfferedTool] = field(default_factory=list)
    tool_choice_none: bool = False
    stream: bool = False
    include_usage: bool = False
    segment: SegmentOptions | None = None
    fingerprint: str = ""


def parse(request: web.Request, data: dict[str, Any], max_text_chars: int) -> ChatRequest:
    messages = _messages(data)
    session_id, source = session_of(request, data, messages)
    model = data.get("model") or ""
    if not isinstance(model, str) or len(model) > 256:
        raise InvalidRequest("model: must be a string")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata: must be an object")
    stream_options = data.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequest("stream_options: must be an object")
    segment_mode = request.headers.get("X-Callagent-Segment") or (metadata or {}).get("segment")
    if segment_mode is not None and not isinstance(segment_mode, str):
        raise InvalidRequest("metadata.segment: must be 'none' or 'clause'")
    chat = ChatRequest(
        session_id=session_id,
        session_source=source,
        model=model,
        kind="empty",
        tools=_tools(data.get("tools")),
        tool_choice_none=data.get("tool_choice") == "none",
        stream=_flag(data, "stream"),
        include_usage=_flag(stream_options or {}, "include_usage"),
        segment=v.segment_options(segment_mode),
        fingerprint=hashlib.sha256(orjson.dumps([session_id, messages], option=orjson.OPT_SORT_KEYS)).hexdigest(),
    )
    last = messages[-1]
    if last["role"] == "user":
        chat.kind = "turn"
        chat.utterance = _text(last, len(messages) - 1)
        if len(chat.utterance) > max_text_chars:
            raise InvalidRequest(f"messages[{len(messages) - 1}].content: longer than {max_text_chars} characters")
        _history(chat, messages)
    elif last["role"] in ("tool", "function"):
        chat.kind = "tool_result"
        chat.tool_name = _called_tool(messages)
    return chat


def _flag(data: Mapping[str, Any], field: str) -> bool:
    """A boolean; ``null`` (sent by some clients for an unset option) is false."""
    return data.get(field) is not None and v.flag(data, field)


def _messages(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: a non-empty array of messages is required")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"messages: more than {MAX_MESSAGES} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}]: must be an object with a string `role`")
    return messages


def _text(message: Mapping[str, Any], index: int) -> str:
    """A message's text: a string, or the ``text`` of its content parts (others are skipped)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise InvalidRequest(f"messages[{index}].content: parts must be objects")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise InvalidRequest(f"messages[{index}].content: a text part needs a string `text`")
                texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"messages[{index}].content: must be a string or an array of parts")


def _history(chat: ChatRequest, messages: list[dict[str, Any]]) -> None:
    """The previous utterance and what the platform recorded of the reply to it."""
    replies: list[str] = []
    for i in range(len(messages) - 2, -1, -1):
        message = messages[i]
        if message["role"] == "user":
            chat.previous_utterance = _text(message, i)
            chat.heard = "".join(reversed(replies))
            return
        if message["role"] == "assistant":
            replies.append(_text(message, i))


def _called_tool(messages: list[dict[str, Any]]) -> str | None:
    """The name of the function whose result the last message carries."""
    call_id = messages[-1].get("tool_call_id")
    if messages[-1]["role"] == "function" and isinstance(messages[-1].get("name"), str):
        return str(messages[-1]["name"])
    for message in reversed(messages):
        if message["role"] != "assistant" or not isinstance(message.get("tool_calls"), list):
            continue
        for call in message["tool_calls"]:
            if isinstance(call, dict) and (call_id is None or call.get("id") == call_id):
                function = call.get("function")
                if isinstance(function, dict) and isinstance(function.get("name"), str):
                    return str(function["name"])
    return None


def _tools(raw: Any) -> list[OfferedTool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("tools: must be an array")
    offered = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"tools[{i}]: must be {{'type': 'function', 'function': {{'name': ...}}}}")
        parameters = function.get("parameters")
        offered.append(OfferedTool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return offered


# -- the session ----------------------------------------------------------------------------


def session_of(request: web.Request, data: Mapping[str, Any], messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(session id, where it came from)."""
    for header in SESSION_HEADERS:
        value = request.headers.get(header)
        if value:
            return _strict(value, f"header {header}"), f"header {header}"
    if data.get("session_id") is not None:
        return _strict(data["session_id"], "session_id"), "session_id"
    metadata = data.get("metadata")
    candidates: list[tuple[str, Any]] = []
    if isinstance(metadata, dict):
        candidates += [(f"metadata.{k}", metadata.get(k)) for k in ("session_id", "sessionId", "call_id")]
    call = data.get("call")
    if isinstance(call, dict):
        candidates.append(("call.id", call.get("id")))
    extend = data.get("extendData")
    if isinstance(extend, dict):
        candidates.append(("extendData.instanceId", extend.get("instanceId")))
    candidates.append(("user", data.get("user")))
    for source, value in candidates:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return _lenient(str(value)), source
    return _derived(data, messages), "derived"


def _strict(value: Any, name: str) -> str:
    if not isinstance(value, str) or not v.SESSION_ID_RE.fullmatch(value):
        raise InvalidRequest(f"{name}: 1 to 128 characters of A-Z a-z 0-9 _ . : -")
    return value


def _lenient(value: str) -> str:
    if v.SESSION_ID_RE.fullmatch(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:32]


def _derived(data: Mapping[str, Any], messages: list[dict[str, Any]]) -> str:
    opening: list[Any] = []
    for message in messages:
        if message["role"] in ("system", "developer") and not opening:
            opening.append(message.get("content"))
        elif message["role"] == "user":
            opening.append(message.get("content"))
            break
    seed = orjson.dumps([data.get("model"), opening], option=orjson.OPT_SORT_KEYS)
    return "conv-" + hashlib.sha256(seed).hexdigest()[:32]
