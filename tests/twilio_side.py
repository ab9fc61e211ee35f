"""The Twilio side of a call, for the tests: webhooks posted, the relay socket driven.

Frames Twilio sends are built from twilio-agent-connect's published ConversationRelay models
(``tac.models.voice``), and every frame callagent sends is checked on arrival:

- ``end`` against ``tac.models.handoff.PendingHandoffData``, the package's model of that
  message, with ``handoffData`` a JSON string of an object;
- ``text``: twilio-agent-connect publishes no model of it (its own relay writes it as a plain
  dict, ``{"type": "text", "token": ..., "last": ...}``), so it is checked for the fields of
  ConversationRelay's text token message and nothing else;
- any other ``type`` fails: only ConversationRelay frames may reach Twilio.

Signatures are computed with the ``twilio`` package's ``RequestValidator``.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from tac.models.handoff import PendingHandoffData
from tac.models.voice import InterruptMessage, PromptMessage, SetupMessage
from twilio.request_validator import RequestValidator

AUTH_TOKEN = "twilio-test-token-0123456789abcdef"
CALL_SID = "CA0123456789abcdef0123456789abcdef"
OUTBOUND_TYPES = {"text", "play", "sendDigits", "language", "end"}
TEXT_FIELDS = {"type", "token", "last", "lang", "interruptible", "preemptible"}


def sign(url: str, params: Mapping[str, str] | None = None, token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


def check_outbound(frame: Any) -> dict[str, Any]:
    """One frame callagent sent, as Twilio would accept it (or the test fails)."""
    assert isinstance(frame, dict) and frame.get("type") in OUTBOUND_TYPES, frame
    if frame["type"] == "end":
        assert PendingHandoffData.model_validate(frame).model_dump(by_alias=True) == frame
        assert isinstance(orjson.loads(frame["handoffData"]), dict)
    elif frame["type"] == "text":
        assert set(frame) <= TEXT_FIELDS and {"token", "last"} <= set(frame), frame
        assert isinstance(frame["token"], str) and isinstance(frame["last"], bool), frame
        assert isinstance(frame.get("lang", ""), str), frame
    else:
        raise AssertionError(f"callagent sends only text and end frames, got {frame!r}")
    return frame


def twiml(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == "Response"
    return root


class RelayCall:
    """One call on ``/conversation-relay``: Twilio's frames out, callagent's frames checked in."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, call_sid: str = CALL_SID) -> None:
        self.ws = ws
        self.call_sid = call_sid

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def setup(self, **custom: str) -> None:
        message = SetupMessage(
            sessionId="VX0123456789abcdef0123456789abcdef",
            callSid=self.call_sid,
            accountSid="AC0123456789abcdef0123456789abcdef",
            **{"from": "+8613800000000", "to": "+8602100000000"},
            direction="inbound",
            callType="PSTN",
            callStatus="RINGING",
            customParameters=custom or None,
        )
        await self.send(message.model_dump(by_alias=True, exclude_none=True))

    async def prompt(self, text: str, last: bool = True) -> None:
        message = PromptMessage(voicePrompt=text, lang="zh-CN", last=last)
        await self.send(message.model_dump(by_alias=True, exclude_none=True))

    async def interrupt(self, heard: str, duration: int | str = 460) -> None:
        frame = InterruptMessage(utteranceUntilInterrupt=heard).model_dump(by_alias=True, exclude_none=True)
        frame["durationUntilInterruptMs"] = duration  # a number, or (as Telnyx may send it) a string
        await self.send(frame)

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return check_outbound(orjson.loads(msg.data))

    async def reply(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Frames up to and including the one that ends a reply (``{token: "", last: true}``)."""
        frames = []
        while True:
            frames.append(await self.receive(timeout))
            if frames[-1] == {"type": "text", "token": "", "last": True}:
                return frames

    @staticmethod
    def spoken(frames: list[dict[str, Any]]) -> str:
        return "".join(f["token"] for f in frames if f["type"] == "text")
