"""What the OpenAI-route tests share: tool schemas as platforms send them, SDK clients,
a call that grows its history as a platform does, and waits on the emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from openai import AsyncOpenAI

from callagent.web.keys import STORE

END_CALL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "End the call.",
        "strict": True,
        "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": False},
    },
}
TRANSFER = {
    "type": "function",
    "function": {
        "name": "transfer_call",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [END_CALL, TRANSFER]
SYSTEM = {"role": "system", "content": "交通事故快处"}
LONG_REPLY = "<state>1002</state>" + "请您先把车辆移到路边安全的地方，打开双闪。" * 5

Sdk = Callable[..., AsyncOpenAI]


@asynccontextmanager
async def sdk_clients() -> AsyncIterator[Sdk]:
    """``make(test_client, api_key=...)``: AsyncOpenAI clients pointed at a test server's /v1, closed at the end."""
    made: list[AsyncOpenAI] = []

    def make(client: Any, api_key: str = "unused", **kwargs: Any) -> AsyncOpenAI:
        kwargs.setdefault("max_retries", 0)
        oa = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=api_key, **kwargs)
        made.append(oa)
        return oa

    try:
        yield make
    finally:
        for oa in made:
            await oa.close()


class Call:
    """One phone call as a platform runs it: the whole history goes out with every request."""

    def __init__(self, oa: AsyncOpenAI, session_id: str, tools: list[dict[str, Any]] = TOOLS) -> None:
        self.oa = oa
        self.headers = {"X-Callagent-Session": session_id}
        self.tools = tools
        self.messages: list[dict[str, Any]] = [SYSTEM]

    async def say(self, text: str) -> tuple[Any, dict[str, Any]]:
        """The caller speaks; returns the final completion (SDK stream helper) and the extension."""
        self.messages.append({"role": "user", "content": text})
        extension: dict[str, Any] = {}
        async with self.oa.chat.completions.stream(
            model="callagent", messages=self.messages, tools=self.tools, extra_headers=self.headers
        ) as stream:
            async for event in stream:
                if event.type == "chunk" and event.chunk.model_extra and "callagent" in event.chunk.model_extra:
                    extension = event.chunk.model_extra["callagent"]
            final = await stream.get_final_completion()
        message = final.choices[0].message
        self.messages.append(message.model_dump(exclude_none=True, exclude={"parsed", "refusal"}))
        return final, extension


async def transcript(client: Any, session_id: str) -> list[Any]:
    return await client.app[STORE].turns(session_id)


async def upstream_called(emulator: Any) -> Any:
    """The emulator's first completions call, once it has arrived."""
    async with asyncio.timeout(2):
        while not emulator.streams:
            await asyncio.sleep(0.005)
    return emulator.streams[0]


async def stream_until(client: Any, session_id: str, messages: list[Any], *, content: bool) -> tuple[Any, str]:
    """A streamed request read until its role chunk (or its first content): (response, text so far)."""
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "x", "stream": True, "messages": messages},
        headers={"X-Callagent-Session": session_id},
    )
    buffer = b""
    needle = b'"content":"' if content else b'"role":"assistant"'
    async with asyncio.timeout(5):
        while b"\n\n" not in buffer or needle not in buffer.replace(b'"content":""', b""):
            buffer += await resp.content.readany()
    said = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in buffer.decode().split("\n\n")
        if line.startswith("data: {")
    )
    return resp, said
