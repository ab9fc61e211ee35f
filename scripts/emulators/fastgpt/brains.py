"""Who writes the emulator's replies: a ``Brain``.

``ScriptedBrain`` gives fixed replies (or a function's), ``LocalBrain`` callagent's embedded
agent behind FastGPT's API. Brain text is cut into ``chunk_chars`` pieces by the stream, so
``<state>`` tags arrive split across chunks the way a model's tokens split them.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Final, Protocol

DEFAULT_REPLY: Final = "<state>1002</state>您好，请问有人受伤吗？"


class Brain(Protocol):
    """Writes the replies: text pieces (``<state>`` tags verbatim) and variable updates (dicts)."""

    def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str | dict[str, Any]]: ...


# f(chat_id, text, variables) -> a string, or a list of strings and variable-update dicts
# (or an awaitable of either).
ReplyFunction = Callable[[str, str, dict[str, Any]], Any]


class ScriptedBrain:
    """Fixed replies: with a list, the N-th turn of a chat gets ``replies[N % len]``;
    with a function ``f(chat_id, text, variables)``, whatever it returns (a string, or a list
    of strings and variable-update dicts; it may be a coroutine function)."""

    def __init__(self, replies: Sequence[str] | ReplyFunction = (DEFAULT_REPLY,)) -> None:
        if not callable(replies) and not replies:
            raise ValueError("ScriptedBrain needs at least one reply")
        self._replies = replies
        self._turns: dict[str, int] = {}

    async def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str | dict[str, Any]]:
        if callable(self._replies):
            out = self._replies(chat_id, text, variables)
            if inspect.isawaitable(out):
                out = await out
        else:
            turn = self._turns.get(chat_id, 0)
            self._turns[chat_id] = turn + 1
            out = self._replies[turn % len(self._replies)]
        for item in [out] if isinstance(out, str | dict) else out:
            yield item


class LocalBrain:
    """callagent's embedded agent (``callagent.upstream.local.LocalAgent``) behind FastGPT's API."""

    def __init__(self, agent: Any = None) -> None:
        self._agent = agent
        self._turns = itertools.count(1)

    async def reply(self, chat_id: str, text: str, variables: dict[str, Any]) -> AsyncIterator[str | dict[str, Any]]:
        from callagent.upstream.base import UpstreamTurn

        if self._agent is None:
            from callagent.upstream.local import LocalAgent

            self._agent = LocalAgent()
        turn = UpstreamTurn(chat_id, f"emulator-{next(self._turns)}", text, dict(variables))
        async with aclosing(self._agent.stream(turn)) as chunks:
            async for chunk in chunks:
                # Keepalives and end markers have no FastGPT counterpart: silence does the job.
                if isinstance(chunk, dict):
                    yield dict(chunk)
                elif isinstance(chunk, str):
                    yield chunk
