"""The local upstream: the embedded intake agent (``callagent.agent``) behind the ``Upstream`` protocol.

The agent runs a call script with no network and no model; this adapter streams its reply the way
a workflow would: the changed variables first, then ``<state>CODE</state>`` and the text, cut into
``chunk_chars`` pieces (the tag always whole in the first) with an optional pause between pieces to
mimic a model's pacing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

from ..agent import AgentReply, default_script, load_script, reply
from .base import UpstreamChunk, UpstreamTurn, VariablesUpdate


class LocalAgent:
    """The embedded intake agent, speaking the same tagged-text protocol as a workflow."""

    name = "local"
    history_turns = 0

    def __init__(
        self, script_path: Path | str | None = None, *, chunk_chars: int = 6, chunk_delay: float = 0.0
    ) -> None:
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be at least 1, not {chunk_chars}")
        if chunk_delay < 0:
            raise ValueError(f"chunk_delay must not be negative, not {chunk_delay}")
        self.script = load_script(script_path if script_path else default_script())
        self._chunk_chars = chunk_chars
        self._chunk_delay = chunk_delay

    def reply(self, text: str, variables: Mapping[str, Any]) -> AgentReply:
        """The answer to one utterance, given the call's variables (the agent keeps no state)."""
        return reply(self.script, text, variables)

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        answer = self.reply(turn.text, turn.variables)
        # The call moves on as soon as the reply starts, like a workflow that already ran:
        # a caller who barges in answers the question being asked, not the one before it.
        yield VariablesUpdate(answer.variables)
        for index, piece in enumerate(answer.pieces(self._chunk_chars)):
            if index and self._chunk_delay > 0:
                await asyncio.sleep(self._chunk_delay)
            yield piece

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        """No history is kept upstream: the call lives in the session variables."""

    async def delete_session(self, session_id: str) -> None:
        """No history is kept upstream: nothing to forget."""

    async def check_ready(self) -> None:
        """Always ready: no network, no model."""
