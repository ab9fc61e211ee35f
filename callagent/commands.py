"""The session-command layer: everything a gateway (or the console) can ask of a call.

Every transport is a codec over this one object: it decodes a request into one of these
calls and encodes what comes back. The rules of a call live here once, whatever the
protocol:

- ``start_turn`` / ``turn``: a caller utterance; a running turn of the session is cut off.
- ``interrupt``: the caller barged in, having heard ``spoken_text``. A running turn stops
  (here, or on the instance that runs it); when the reply was already complete, what was
  heard is recorded on the last turn instead.
- ``set_variables`` / ``get_variables``: session variables. Keys starting with ``_`` are the
  upstreams' internal state: never shown to a gateway.
- ``delete_last_turn``: undo the last turn upstream and in the variables; refused while a turn
  of the session is still running (it would be undone half-way, or not at all).
- ``delete_session``: stop the call's turn, forget it here, then upstream: the local data goes
  even when the upstream is down, and the upstream's part is reported on its own.

Variables are capped per session (``max_variables`` keys, ``max_variables_bytes`` of JSON):
one call must not slow every other down.
- ``require_session``: a session the gateway names must exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from .errors import CallagentError, SessionBusy, SessionNotFound, VariablesLimit
from .settings import Settings
from .store import Store
from .store.lease import wait_released
from .turns import Turn, TurnEngine, TurnRequest
from .upstream.base import Upstream

log = structlog.get_logger(component="callagent.commands")

INTERNAL_PREFIX = "_"


def public_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The variables a gateway may see: not the upstreams' internal ``_``-keys."""
    return {k: v for k, v in variables.items() if not k.startswith(INTERNAL_PREFIX)}


@dataclass(slots=True, frozen=True)
class Interruption:
    cancelled: bool  # a running turn was stopped
    turn_id: str | None  # the turn it concerned, when known
    turn: Turn | None = None  # the turn stopped in this process; its terminal event is queued


class SessionCommands:
    def __init__(self, engine: TurnEngine, store: Store, upstream: Upstream, settings: Settings) -> None:
        self.engine = engine
        self.store = store
        self.upstream = upstream
        self.settings = settings

    # -- turns -----------------------------------------------------------------------------

    def start_turn(self, request: TurnRequest) -> Turn:
        return self.engine.start(request)

    def turn(self, request: TurnRequest) -> AbstractAsyncContextManager[Turn]:
        """A turn for a consumer that reads its events; leaving early cancels it."""
        return self.engine.turn(request)

    async def interrupt(
        self, session_id: str, spoken_text: str | None = None, turn_id: str | None = None
    ) -> Interruption:
        """Stop the session's running turn (``turn_id``: only that one); record what was heard."""
        turn = self.engine.running(session_id)
        if turn is None:
            cancelled = await self.engine.cancel_elsewhere(session_id, spoken_text, turn_id)
        elif turn_id in (None, turn.id):
            cancelled = turn.cancel(spoken_text)
            # Its terminal event (and so its transcript row) comes first: nothing of it follows.
            await asyncio.shield(turn.ended_wait())
            turn_id = turn.id
        else:
            cancelled, turn = False, None
        if not cancelled and spoken_text is not None:
            # The reply was already complete: the caller barged in on its playback.
            await self.record_heard(session_id, spoken_text, turn_id)
        return Interruption(cancelled, turn_id, turn)

    async def record_heard(self, session_id: str, spoken_text: str, turn_id: str | None = None) -> bool:
        """Note on the last turn (``turn_id``: only if it is that one) what the caller heard of it."""
        record = await self.store.last_turn(session_id)
        if record is None or (turn_id is not None and record.turn_id != turn_id):
            return False
        record.spoken_text = spoken_text
        await self.store.save_turn(record)
        return True

    # -- variables -------------------------------------------------------------------------

    async def set_variables(self, session_id: str, values: Mapping[str, Any]) -> None:
        """Write these variables (one atomic write per key in the store), within the caps."""
        merged = {**await self.store.get_variables(session_id), **values}
        s = self.settings
        if len(merged) > s.max_variables:
            raise VariablesLimit(f"a session holds at most {s.max_variables} variables")
        if len(orjson.dumps(merged)) > s.max_variables_bytes:
            raise VariablesLimit(f"a session's variables take at most {s.max_variables_bytes} bytes")
        await self.store.set_variables(session_id, values)

    async def get_variables(self, session_id: str) -> dict[str, Any]:
        return public_variables(await self.store.get_variables(session_id))

    # -- the session -----------------------------------------------------------------------

    async def session_known(self, session_id: str) -> bool:
        """True once the session has data, or while its first turn runs (here or elsewhere)."""
        return (
            self.engine.running(session_id) is not None
            or await self.store.session_exists(session_id)
            or await self.store.lease_owner(session_id) is not None
        )

    async def require_session(self, session_id: str) -> str:
        if not await self.session_known(session_id):
            raise SessionNotFound(f"unknown session {session_id}")
        return session_id

    async def delete_last_turn(self, session_id: str) -> str | None:
        """Delete the last turn's upstream records and undo the variables it set."""
        running = self.engine.running(session_id)
        if running is not None and not running.ended:
            raise SessionBusy(f"session {session_id} is running a turn: interrupt it first")
        record = await self.store.last_turn(session_id)
        owner = await self.store.lease_owner(session_id)
        if owner is not None and (record is None or record.turn_id != owner):
            # Another instance runs a turn that has not recorded its reply yet.
            raise SessionBusy(f"session {session_id} is running a turn: interrupt it first")
        if record is None:
            return None
        await self.upstream.delete_records(session_id, record.upstream_records)
        before = record.variables_before
        if before:
            await self.store.set_variables(session_id, {k: v for k, v in before.items() if v is not None})
            await self.store.delete_variables(session_id, [k for k, v in before.items() if v is None])
        record.deleted = True
        await self.store.save_turn(record)
        return record.turn_id

    async def delete_session(self, session_id: str) -> CallagentError | None:
        """Stop the session's turn, forget its data here, then its conversation upstream.

        The local data is gone when this returns; the upstream's failure, if any, is returned.
        """
        turn = self.engine.running(session_id)
        if turn is not None:
            turn.cancel()
            await turn.wait()
        elif await self.engine.cancel_elsewhere(session_id, None):
            # A turn on another instance saves its transcript as it stops: let it, then delete.
            await wait_released(self.store, session_id, self.settings.first_token_timeout)
        await self.store.delete_session(session_id)
        try:
            await self.upstream.delete_session(session_id)
        except CallagentError as e:
            log.warning("upstream_session_not_deleted", session_id=session_id, error=e.msg)
            return e
        return None
