"""Dify service API client (chat, agent and chatflow apps): ``POST /v1/chat-messages`` streaming.

Dify scopes conversations, stop, deletes and variables by ``user``: callagent sends the session
id. The Dify ``conversation_id`` of the session is learnt from the first turn's events and kept
in the internal session variable ``_dify_conversation_id`` (internal keys start with ``_``), so
any instance sharing the store continues the same conversation.

What reaches the app, and when (``dify_vars``):

- first turn of a conversation: ``inputs`` = the session variables the app declares in its
  user input form (``GET /v1/parameters``, read once per process), converted to the declared
  type; undeclared ones are never sent, a value that cannot be converted is left out. Dify uses
  ``inputs`` on a conversation's first message only;
- every later turn: before ``chat-messages``, each declared conversation variable (chatflow)
  whose session value changed since callagent last pushed or read it is PUT;
- after every reply: the conversation variables are read back (``GET .../variables``) and
  mirrored into the session, like FastGPT's ``updateVariables``.

What counts as speech: ``message`` and ``agent_message`` answers, ``<think>`` blocks removed.
An Agent app repeats its answer in a closing ``message``: once ``agent_message`` was seen,
``message`` is ignored. ``message_replace`` (output moderation) speaks the replacement and
silences the rest. ``message_end`` ends the reply, so does ``workflow_paused`` (a Human Input
node); a failed ``workflow_finished``, an ``error`` event and any HTTP error are failures.
Everything else (``workflow_*``, ``node_*``, ``tts_*``, ``reasoning_chunk``, unknown events)
only counts as life; a bare ``event: ping`` carries no data and is not even that.

Barge-in: closing the response does not stop a Dify task, so a reply left unfinished is also
stopped with ``POST /v1/chat-messages/{task_id}/stop`` and the same ``user``, from a task the
client tracks and awaits on close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from ..errors import NotSupported, UpstreamAuth, UpstreamError, UpstreamProtocol
from .base import KEEPALIVE, UpstreamChunk, UpstreamTurn, VariablesUpdate
from .dify_vars import (
    CONVERSATION_KEY,
    PUSHED_KEY,
    VARIABLES_KEY,
    InputField,
    declared_inputs,
    parse_input_form,
    to_variable_type,
)
from .http import Peer, frame_json, post_stream, read_small, request_small, sse_events
from .openai_think import ThinkFilter

log = structlog.get_logger(component="callagent.upstream.dify")
_PEER = Peer("Dify", log, "dify")

_MAX_MESSAGE = 300
_MAX_PAGES = 50


class DifyClient:
    name = "dify"
    history_turns = 0  # Dify keeps the conversation itself

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        silence_text: str,
        connect_timeout: float = 3.0,
        request_timeout: float = 10.0,
    ) -> None:
        self._http = http
        base = base_url.rstrip("/")
        self._base = base.removesuffix("/v1")  # accepted with or without the /v1 Dify's UI shows
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._silence_text = silence_text
        # No total deadline on the stream: the turn engine owns its deadlines. Every other call has one.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
        self._call_timeout = aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout)
        self._form: list[InputField] | None = None
        self._stops: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"DifyClient(base_url={self._base!r})"

    # -- turns -----------------------------------------------------------------------------

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        variables = turn.variables
        conversation_id = variables.get(CONVERSATION_KEY)
        if not isinstance(conversation_id, str) or not conversation_id:
            conversation_id = None
        if conversation_id is not None:
            pushed = await self._push_variables(turn.session_id, conversation_id, variables)
            if pushed is not None:
                yield VariablesUpdate({PUSHED_KEY: pushed})
        response = await self._start(turn, conversation_id)
        if response is None:  # the stored conversation is gone in Dify: start a new one
            log.warning("dify_conversation_gone", session_id=turn.session_id)
            conversation_id = None
            yield VariablesUpdate({CONVERSATION_KEY: None, VARIABLES_KEY: None, PUSHED_KEY: None})
            response = await self._start(turn, None)
            assert response is not None
        task_id: str | None = None
        finished = False  # the task ended in Dify (its end, or an error): nothing to stop
        try:
            async with response:
                think = ThinkFilter()
                agent = replaced = False
                async for event in sse_events(response, _PEER):
                    payload = _json(event.data)
                    kind = payload.get("event")
                    task_id = task_id or _str(payload.get("task_id")) or None
                    new_id = _str(payload.get("conversation_id"))
                    if new_id and new_id != conversation_id:
                        conversation_id = new_id
                        yield VariablesUpdate({CONVERSATION_KEY: new_id})
                    if kind == "agent_message" or (kind == "message" and not agent):
                        agent = agent or kind == "agent_message"
                        answer = payload.get("answer")
                        spoken = think.feed(answer) if isinstance(answer, str) and not replaced else ""
                        yield spoken or KEEPALIVE
                    elif kind == "message_replace":
                        replaced = True
                        yield _str(payload.get("answer")) or KEEPALIVE
                    elif kind in ("message_end", "workflow_paused"):
                        finished = True
                        break
                    elif kind == "error":
                        finished = True
                        raise _error_of(payload, 200)
                    elif kind == "workflow_finished" and _workflow_failed(payload):
                        finished = True
                        raise UpstreamError(f"Dify workflow failed: {_workflow_error(payload)}")
                    else:
                        yield KEEPALIVE
                if not finished:
                    raise UpstreamProtocol("Dify closed the stream before message_end")
                tail = think.finish()
                if tail and not replaced:
                    yield tail
            if variables.get(VARIABLES_KEY) != {}:  # {}: the app declares none, known since the first reply
                mirrored = await self._mirror_variables(turn.session_id, conversation_id)
                if mirrored:
                    yield VariablesUpdate(mirrored)
        finally:
            if task_id is not None and not finished:
                self._stop_later(task_id, turn.session_id)

    async def _start(self, turn: UpstreamTurn, conversation_id: str | None) -> aiohttp.ClientResponse | None:
        """The chat-messages response, checked; None if Dify no longer knows the conversation."""
        inputs = {} if conversation_id else declared_inputs(await self._input_form(), turn.variables)
        body = {
            "query": turn.text.strip() or self._silence_text,  # Dify refuses an empty query
            "inputs": inputs,
            "response_mode": "streaming",
            "user": turn.session_id,
            "conversation_id": conversation_id or "",
            "auto_generate_name": False,
        }
        response = await self._post_chat(orjson.dumps(body))
        if response.status == 200 and "text/event-stream" in response.headers.get("Content-Type", ""):
            return response
        async with response:
            raw = await read_small(response)
        if response.status == 404 and conversation_id:
            return None
        raise _http_error(response.status, raw)

    async def _post_chat(self, body: bytes) -> aiohttp.ClientResponse:
        headers = {**self._headers, "Content-Type": "application/json"}
        url = f"{self._base}/v1/chat-messages"
        return await post_stream(self._http, _PEER, url, body=body, headers=headers, client_timeout=self._timeout)

    # -- barge-in --------------------------------------------------------------------------

    def _stop_later(self, task_id: str, user: str) -> None:
        task = asyncio.get_running_loop().create_task(self._stop(task_id, user), name=f"dify-stop-{task_id}")
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _stop(self, task_id: str, user: str) -> None:
        try:
            await self._call("POST", f"/v1/chat-messages/{task_id}/stop", json={"user": user})
        except UpstreamError as e:
            log.warning("dify_stop_failed", session_id=user, task_id=task_id, error=e.msg)

    async def close(self) -> None:
        """Wait for the stop calls still under way (each has its own deadline)."""
        if self._stops:
            await asyncio.wait(list(self._stops))

    # -- variables -------------------------------------------------------------------------

    async def _input_form(self) -> list[InputField]:
        if self._form is None:
            self._form = parse_input_form(await self._call("GET", "/v1/parameters"))
        return self._form

    async def _push_variables(
        self, user: str, conversation_id: str, variables: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """PUT the declared conversation variables changed since last pushed or read; the new
        pushed map, or None when nothing was pushed."""
        declared = variables.get(VARIABLES_KEY)
        if not isinstance(declared, dict):
            return None
        pushed = dict(variables.get(PUSHED_KEY) or {})
        changed = False
        for name, meta in declared.items():
            if not (isinstance(meta, list) and len(meta) == 2):
                continue
            variable_id, value_type = meta
            if name not in variables or (name in pushed and pushed[name] == variables[name]):
                continue
            value = to_variable_type(value_type, variables[name])
            if value is None:
                log.warning("dify_variable_not_pushed", session_id=user, variable=name, value_type=value_type)
                continue
            path = f"/v1/conversations/{conversation_id}/variables/{variable_id}"
            try:
                await self._call("PUT", path, json={"value": value, "user": user})
            except UpstreamError as e:
                log.warning("dify_variable_not_pushed", session_id=user, variable=name, error=e.msg)
                continue
            pushed[name] = variables[name]
            changed = True
        return pushed if changed else None

    async def _mirror_variables(self, user: str, conversation_id: str | None) -> dict[str, Any]:
        """The conversation variables as Dify holds them, as session variables (with the
        internal map of their ids and types, and what Dify now holds as 'pushed')."""
        if conversation_id is None:
            return {}
        rows: list[dict[str, Any]] = []
        last_id: str | None = None
        try:
            for _ in range(_MAX_PAGES):
                params = {"user": user, "limit": "100", **({"last_id": last_id} if last_id else {})}
                page = await self._call("GET", f"/v1/conversations/{conversation_id}/variables", params=params)
                data = [r for r in page.get("data") or () if isinstance(r, dict) and _str(r.get("name"))]
                rows.extend(data)
                if not page.get("has_more") or not data:
                    break
                last_id = _str(data[-1].get("id"))
        except UpstreamError as e:
            log.warning("dify_variables_not_read", session_id=user, error=e.msg)
            return {}
        rows = [r for r in rows if not str(r["name"]).startswith("_")]
        values = {str(r["name"]): r.get("value") for r in rows}
        declared = {str(r["name"]): [str(r.get("id")), str(r.get("value_type"))] for r in rows}
        return values | {VARIABLES_KEY: declared, PUSHED_KEY: dict(values)}

    # -- records and sessions --------------------------------------------------------------

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        raise NotSupported("Dify has no message delete: delete_last_turn is not supported with the Dify upstream")

    async def delete_session(self, session_id: str) -> None:
        """Delete every conversation of this user (the session) in the app."""
        for _ in range(_MAX_PAGES):
            page = await self._call("GET", "/v1/conversations", params={"user": session_id, "limit": "100"})
            ids = [c["id"] for c in page.get("data") or () if isinstance(c, dict) and _str(c.get("id"))]
            for conversation_id in ids:
                await self._call("DELETE", f"/v1/conversations/{conversation_id}", json={"user": session_id})
            if not ids or not page.get("has_more"):
                return

    async def check_ready(self) -> None:
        self._form = parse_input_form(await self._call("GET", "/v1/parameters"))

    async def _call(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> dict[str, Any]:
        """One JSON call with its deadline; 404 on DELETE counts as done."""
        headers = dict(self._headers)
        data = None
        if json is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(json)
        status, raw = await request_small(
            self._http,
            _PEER,
            method,
            self._base + path,
            failed=f"did not answer {method} {path.split('/')[2]}",
            client_timeout=self._call_timeout,
            headers=headers,
            params=params,
            data=data,
        )
        if status == 204 or (status == 404 and method == "DELETE"):
            return {}
        if status != 200:
            raise _http_error(status, raw)
        payload = _json(raw)
        if not payload:
            raise UpstreamProtocol(f"Dify answered {method} with a body that is not a JSON object")
        return payload


# -- stream parsing -------------------------------------------------------------------------


def _json(data: bytes) -> dict[str, Any]:
    payload = frame_json(data, _PEER)
    return payload if isinstance(payload, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _workflow_failed(payload: dict[str, Any]) -> bool:
    data = payload.get("data")
    return isinstance(data, dict) and data.get("status") == "failed"


def _workflow_error(payload: dict[str, Any]) -> str:
    data = payload.get("data")
    return str(data.get("error") or "no reason given")[:_MAX_MESSAGE] if isinstance(data, dict) else ""


# -- errors ---------------------------------------------------------------------------------


def _http_error(status: int, raw: bytes) -> UpstreamError:
    if status in (401, 403):
        return UpstreamAuth(f"Dify refused the API key (HTTP {status})")
    payload = _json(raw)
    if payload:
        return _error_of(payload, status)
    return UpstreamError(f"Dify answered HTTP {status}")


def _error_of(payload: dict[str, Any], status: int) -> UpstreamError:
    """Dify's error body: ``{"code": "invalid_param", "message": "...", "status": 400}``; the
    ``error`` event carries the same fields."""
    code = _str(payload.get("code")) or "error"
    if code == "unauthorized" or payload.get("status") in (401, 403):
        return UpstreamAuth("Dify refused the API key")
    message = str(payload.get("message") or code)[:_MAX_MESSAGE]
    where = f" (HTTP {status})" if status != 200 else ""
    return UpstreamError(f"Dify{where}: {code}: {message}")
