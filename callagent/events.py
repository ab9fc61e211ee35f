"""The events of a turn, and how each transport puts them on the wire.

The turn engine yields ``StageCode``, ``TextDelta`` and finally ``Done`` or ``Error``.
Transports differ only in encoding:

Errors travel as objects (``Error.error`` is the ``CallagentError``) and each wire format has
one encoder: the HTTP body (``CallagentError.body``), the SSE ``error`` event, ``ws_error``.

- SSE (``SSEFrames``): ``event: <name>\\n`` + one ``data: <json>\\n`` + blank line, LF only,
  no ``id:``/``retry:`` lines; the byte layout the original service produced.
- WebSocket (``ws_message``): one JSON object with ``type`` = the event name.
- JSON ``/chat`` (``FoldedReply``): the whole turn folded into one reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import CallagentError


@dataclass(slots=True)
class StageCode:
    code: str
    name: str
    event = "stage_code"

    def fields(self) -> dict[str, Any]:
        return {"nextStageCode": self.code, "nextStage": self.name}


@dataclass(slots=True)
class TextDelta:
    text: str
    event = "text_delta"

    def fields(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(slots=True)
class Done:
    status: str  # "completed" | "cancelled"
    latency: dict[str, float | None] = field(default_factory=dict)
    saved: bool = True  # the turn's transcript row is in the store
    event = "done"

    def fields(self) -> dict[str, Any]:
        if self.saved:
            return {"status": self.status, "latency": self.latency}
        return {"status": self.status, "latency": self.latency, "transcriptSaved": False}


@dataclass(slots=True)
class Error:
    """The turn failed: the error object itself travels to every transport's encoder."""

    error: CallagentError
    event = "error"

    @property
    def type(self) -> str:
        return self.error.type

    def fields(self) -> dict[str, Any]:
        return self.error.body()


Event = StageCode | TextDelta | Done | Error
TERMINAL = (Done, Error)


def dumps(obj: Any) -> str:
    """JSON text, UTF-8 unescaped (aiohttp ``json_response(dumps=...)`` signature)."""
    return orjson.dumps(obj).decode()


class SSEFrames:
    """The SSE frames of one turn: what every frame shares (the event names, the turn id) is
    encoded once, and a text delta, the frame sent most, is put together from bytes."""

    __slots__ = ("_tail", "turn_id")

    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self._tail = b',"turnId":' + orjson.dumps(turn_id) + b',"seq":'

    def frame(self, event: Event, seq: int) -> bytes:
        if type(event) is TextDelta:
            return b'event: text_delta\ndata: {"text":%s%s%d}\n\n' % (orjson.dumps(event.text), self._tail, seq)
        data = event.fields()
        data["turnId"] = self.turn_id
        data["seq"] = seq
        return _SSE_EVENT[type(event)] + orjson.dumps(data) + b"\n\n"


_SSE_EVENT = {kind: b"event: %s\ndata: " % kind.event.encode() for kind in (StageCode, TextDelta, Done, Error)}


def ws_message(event: Event, turn_id: str, seq: int) -> dict[str, Any]:
    if isinstance(event, Error):
        return ws_error(event.error, turnId=turn_id, seq=seq)
    msg: dict[str, Any] = {"type": event.event, "turnId": turn_id, "seq": seq}
    msg.update(event.fields())
    return msg


def ws_error(error: CallagentError, reply_to: str | None = None, **extra: Any) -> dict[str, Any]:
    """An error as a WebSocket message: ``type`` is the message type on a socket, so the error
    kind travels as ``error``."""
    msg: dict[str, Any] = {"type": "error", **extra, "code": str(error.status), "msg": error.msg, "error": error.type}
    if reply_to:
        msg["replyTo"] = reply_to
    return msg


@dataclass(slots=True)
class FoldedReply:
    """A whole turn as the JSON ``/chat`` reply: text joined, the last stage code wins."""

    text: list[str] = field(default_factory=list)
    stage: StageCode | None = None
    done: Done | None = None
    error: Error | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
        elif isinstance(event, StageCode):
            self.stage = event
        elif isinstance(event, Done):
            self.done = event
        else:
            self.error = event
