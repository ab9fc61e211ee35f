"""The FastGPT releases the emulator can be, and what differs between them.

The facts come from ``fastgpt-protocol.md`` section 0 (the release table). Each ``Build`` is one
release a customer may run; the emulator answers as that release would: which paths exist,
where a record delete reads its ids, how errors are answered, which end events a stream has
and where ``flowResponses`` sits, whether undeclared variables are dropped, whether a second
run of a chat still generating is refused (504001), whether the stop API exists, whether a
client leaving stops the run, and which interactive nodes a run can pause at.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final


@dataclass(frozen=True, slots=True)
class Build:
    """One release; a field left out is what the oldest release (4.8.15) does."""

    name: str
    # known errors: "200" (HTTP 200 + envelope), "500" (HTTP 500), "4xx" (4xx codes keep their status)
    error_status: str = "200"
    stop_delta_null: bool = False  # the stop chunk's delta is {"role":"assistant","content":null} (else {})
    v2_completions: bool = False  # POST /api/v2/chat/completions exists
    workflow_duration: bool = False  # the `workflowDuration` event exists
    declared_variables: bool = False  # only declared variables reach the workflow (by label, then key)
    item_delete: str | None = "query"  # item/delete reads its ids from the "query", the "body", or is a 404 (None)
    record_delete: str | None = None  # record/delete reads "query", "any" (query or body), or is a 404 (None)
    history_paths: bool = (
        False  # /history/{getHistories,updateHistory,delHistory,clearHistories}, /record/getPaginationRecords
    )
    stop_api: bool = False  # POST /api/v2/chat/stop exists
    payment_pause: bool = False  # running out of AI points pauses the run with a `paymentPause` interactive
    validates_bodies: bool = False  # a bad body is HTTP 400 JSON, a team rate limit HTTP 429 JSON
    chat_is_generating: bool = False  # a run on a chat still generating is refused with 504001
    flow_responses_before_done: bool = False  # v1 `flowResponses` before `[DONE]` (else after)
    v1_stops_on_disconnect: bool = False  # a v1 client leaving stops the workflow at once (else it runs on, then saves)
    human_id_is_response_id: bool = False  # the Human record's dataId is the responseChatItemId
    agent_events: bool = False  # chatTitle / plan / ... events in streams

    def has_path(self, path: str) -> bool:
        """Whether this release serves ``path`` (every path the emulator knows)."""
        chat = "/api/core/chat/"
        if path == "/api/v2/chat/completions":
            return self.v2_completions
        if path == "/api/v2/chat/stop":
            return self.stop_api
        if path == chat + "item/delete":
            return self.item_delete is not None
        if path == chat + "record/delete":
            return self.record_delete is not None
        if path.startswith((chat + "history/", chat + "record/")):
            return self.history_paths
        return True


def _releases() -> tuple[Build, ...]:
    """Each release as the changes over the one before it, so each fact is written once."""
    first = Build("4.8.15")
    v4_11 = replace(
        first,
        name="4.11",
        error_status="500",
        stop_delta_null=True,
        v2_completions=True,
        workflow_duration=True,
        declared_variables=True,
    )
    v4_14_5 = replace(v4_11, name="4.14.5", item_delete="body", history_paths=True, stop_api=True, payment_pause=True)
    v4_14_11 = replace(
        v4_14_5,
        name="4.14.11",
        error_status="4xx",
        item_delete=None,
        record_delete="query",
        validates_bodies=True,
        chat_is_generating=True,
        flow_responses_before_done=True,
    )
    v4_15 = replace(
        v4_14_11,
        name="4.15",
        record_delete="any",
        v1_stops_on_disconnect=True,
        human_id_is_response_id=True,
        agent_events=True,
    )
    return (first, v4_11, v4_14_5, v4_14_11, v4_15)


BUILDS: Final = {b.name: b for b in _releases()}
DEFAULT_BUILD: Final = "4.15"


def build_named(name: str) -> Build:
    try:
        return BUILDS[name]
    except KeyError:
        raise ValueError(f"unknown FastGPT build {name!r}; known: {', '.join(BUILDS)}") from None
