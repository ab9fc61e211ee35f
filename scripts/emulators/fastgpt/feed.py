"""The brain's reply as a workflow produces it: one item at a time, heartbeats while it is silent.

Also the small helpers a run needs to read its request (the message text, the answer to an
interactive node) and to cut replies into chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Any, Final

from .faults import BIG_TEXT, WRAPPERS
from .wire import SseWriter


class BrainFailed(Exception):
    """The brain raised: FastGPT reports a workflow crash as an `error` frame."""


_END: Final = object()


async def _step(source: AsyncIterator[Any]) -> Any:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return _END


class BrainFeed:
    """The brain's reply one item at a time, heartbeating (through a writer) while it is silent."""

    def __init__(self, source: AsyncIterator[str | dict[str, Any]]) -> None:
        self._source = source
        self._pending: asyncio.Task[Any] | None = None

    async def next(self, writer: SseWriter | None) -> str | dict[str, Any] | None:
        """The next item, or None at the end of the reply (or when interrupted)."""
        if writer is not None:
            await writer.flush()
        step = self._pending = asyncio.create_task(_step(self._source))
        try:
            while not step.done():
                await asyncio.wait((step,), timeout=writer.until_heartbeat() if writer else None)
                if writer is not None and not step.done():
                    await writer.heartbeat_if_due()
        finally:
            self._pending = None
            if not step.done():
                step.cancel()
                await asyncio.wait((step,))
        if step.cancelled():
            return None
        error = step.exception()
        if error is not None:
            raise BrainFailed(str(error) or type(error).__name__) from error
        item = step.result()
        return None if item is _END else item

    def interrupt(self) -> None:
        if self._pending is not None:
            self._pending.cancel()

    async def close(self) -> None:
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            # A generator interrupted mid-step may refuse to close again: it is closed already.
            with suppress(RuntimeError):
                await aclose()


async def with_big_text(source: AsyncIterator[str | dict[str, Any]]) -> AsyncIterator[str | dict[str, Any]]:
    async with aclosing(source) as items:  # type: ignore[type-var]
        async for item in items:
            yield item
    yield BIG_TEXT


async def nothing() -> AsyncIterator[str | dict[str, Any]]:
    return
    yield  # an async generator with no items


def accepts(node: dict[str, Any], text: str) -> bool:
    """Whether ``text`` answers the (unwrapped) interactive node so that a branch runs."""
    for _ in range(16):
        if node.get("type") not in WRAPPERS:
            break
        node = node.get("params", {}).get("childrenResponse") or {}
    if node.get("type") == "userSelect":
        return text in [o.get("value") for o in node.get("params", {}).get("userSelectOptions", [])]
    return True


def message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def cut(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
