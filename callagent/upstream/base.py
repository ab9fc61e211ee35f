"""What every upstream (the LLM workflow behind callagent) must provide.

An upstream turns one caller utterance into an async stream of chunks:

- ``str``: a piece of reply text, possibly containing ``<state>CODE</state>`` tags
  (the turn engine strips them; upstreams never parse tags themselves);
- ``VariablesUpdate``: variables the workflow set (FastGPT sends all of them, the local agent
  the ones it changed); the engine merges them into the session's variables;
- ``UpstreamRecords``: the records the turn created upstream, when not its two usual ids;
- ``KEEPALIVE``: the upstream is alive but said nothing speakable (heartbeats, node status).
  It only resets the turn's idle deadline;
- ``END_OF_SPEECH``: the reply is complete, but the upstream still has bookkeeping to finish on
  this connection (FastGPT saves the chat between ``workflowDuration`` and ``[DONE]``). The
  engine ends the turn for the caller at once and keeps draining until the stream ends.

The stream simply ends when the reply is complete. Any failure is raised as an
``UpstreamError`` subclass from ``callagent.errors``. Closing the iterator (``aclose``) or
cancelling the task that iterates it must release the upstream connection at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ..store.base import TurnRecord


class VariablesUpdate(dict[str, Any]):
    """Variables the workflow set, merged into the session's variables by the engine."""


class UpstreamRecords(tuple[str, ...]):
    """The records this turn really created upstream, when not the usual two (an answer to a
    paused interactive node creates none): the transcript row keeps them for undo."""


class Marker:
    """A chunk that carries no text: ``KEEPALIVE`` or ``END_OF_SPEECH``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


KEEPALIVE: Final = Marker("KEEPALIVE")
END_OF_SPEECH: Final = Marker("END_OF_SPEECH")

UpstreamChunk = str | VariablesUpdate | UpstreamRecords | Marker


@dataclass(slots=True, frozen=True)
class UpstreamTurn:
    """One caller utterance as the upstream sees it."""

    session_id: str
    turn_id: str
    text: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    # The session's earlier turns, oldest first, for upstreams that keep no conversation of
    # their own (``Upstream.history_turns`` > 0): what the caller said and, in ``spoken_text``
    # when they barged in, what they heard. Deleted turns are left out.
    history: tuple[TurnRecord, ...] = ()

    @property
    def human_record_id(self) -> str:
        """Id of the stored caller record upstream (FastGPT ``messages[0].dataId``)."""
        return f"{self.turn_id}-q"

    @property
    def ai_record_id(self) -> str:
        """Id of the stored agent record upstream (FastGPT ``responseChatItemId``)."""
        return f"{self.turn_id}-a"


class Upstream(Protocol):
    """The workflow callagent talks to: FastGPT, Dify, an OpenAI-compatible model or the local agent."""

    name: str
    history_turns: int
    """How many earlier turns the engine passes in ``UpstreamTurn.history`` (0: none)."""

    def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        """Run one turn; yield reply chunks as soon as they exist."""
        ...

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        """Delete these stored records of the session's conversation (a missing one is no error)."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Forget the session's whole conversation upstream (a missing one is no error)."""
        ...

    async def check_ready(self) -> None:
        """Raise ``UpstreamError`` when the upstream cannot serve turns right now."""
        ...
