"""Client for any OpenAI-compatible chat completions server (DeepSeek, Qwen through DashScope's
compatible mode, vLLM, Ollama, OpenAI itself): ``POST {OPENAI_BASE_URL}/chat/completions``
with ``stream: true``.

The server keeps no conversation: every turn sends the system prompt and the session's history
built by ``openai_messages`` from the transcript in the store. So ``delete_records`` and
``delete_session`` have nothing to do upstream: the engine marks the turn deleted (left out of
the next history) or deletes the session's transcript.

What counts as speech: ``delta.content`` with ``<think>`` blocks removed. Never spoken:
``delta.reasoning_content`` (DeepSeek, DashScope, older vLLM) and ``delta.reasoning`` (newer
vLLM); they only count as life. A chunk with a ``finish_reason`` ends the reply (end of speech;
the usage chunk and ``[DONE]`` follow). A ``data: {"error": ...}`` frame (vLLM sends one mid-
stream, then ``[DONE]``; older vLLM a bare ``{"object": "error", ...}``), a non-200 answer and
an EOF before the end are failures.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from ..errors import UpstreamAuth, UpstreamError, UpstreamProtocol
from .base import END_OF_SPEECH, KEEPALIVE, UpstreamChunk, UpstreamTurn
from .http import Peer, frame_json, post_stream, read_small, request_small, sse_events
from .openai_messages import PromptTemplate, build_messages
from .openai_think import ThinkFilter

log = structlog.get_logger(component="callagent.upstream.openai")
_PEER = Peer("the model server", log, "openai")

_AUTH_STATUSES = {401, 403}
_MAX_MESSAGE = 300


class OpenAICompatClient:
    name = "openai"

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        model: str,
        prompt: PromptTemplate,
        extra_body: Mapping[str, Any] | None = None,
        history_turns: int = 20,
        silence_text: str = "",
        drop_interrupted: bool = False,
        connect_timeout: float = 3.0,
        request_timeout: float = 10.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._prompt = prompt
        self._extra_body = dict(extra_body or {})
        self.history_turns = history_turns
        self._silence_text = silence_text
        self._drop_interrupted = drop_interrupted
        # No total deadline on the stream: the turn engine owns first-token, idle and turn deadlines.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
        self._ready_timeout = aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout)

    def __repr__(self) -> str:
        return f"OpenAICompatClient(base_url={self._base!r}, model={self._model!r})"

    # -- turns -----------------------------------------------------------------------------

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        messages = build_messages(
            self._prompt.render(turn.variables),
            turn.history,
            turn.text,
            silence_text=self._silence_text,
            drop_interrupted=self._drop_interrupted,
        )
        body = {**self._extra_body, "model": self._model, "messages": messages, "stream": True}
        response = await self._post_completions(orjson.dumps(body))
        async with response:
            if response.status != 200:
                raise _http_error(response.status, await read_small(response))
            if "text/event-stream" not in response.headers.get("Content-Type", ""):
                raise _http_error(200, await read_small(response))
            think = ThinkFilter()
            finished = done = False
            async for event in sse_events(response, _PEER):
                if event.data == b"[DONE]":
                    done = True
                    break
                if finished:
                    continue  # the usage chunk after the end of speech
                choice = _choice(event.data)
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                yield (think.feed(content) if isinstance(content, str) else "") or KEEPALIVE
                if choice.get("finish_reason"):
                    finished = True
                    tail = think.finish()
                    if tail:
                        yield tail
                    yield END_OF_SPEECH
            if finished:
                return
            if not done:
                raise UpstreamProtocol("the model server closed the stream before [DONE]")
            tail = think.finish()  # [DONE] without a finish_reason (some servers)
            if tail:
                yield tail

    async def _post_completions(self, body: bytes) -> aiohttp.ClientResponse:
        headers = {**self._headers, "Content-Type": "application/json", "Accept": "text/event-stream"}
        url = f"{self._base}/chat/completions"
        return await post_stream(self._http, _PEER, url, body=body, headers=headers, client_timeout=self._timeout)

    # -- records and sessions: the history lives in callagent's store ------------------------

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        """Nothing is stored upstream; the engine leaves deleted turns out of the history."""

    async def delete_session(self, session_id: str) -> None:
        """Nothing is stored upstream; the engine deletes the session's transcript."""

    async def check_ready(self) -> None:
        status, raw = await request_small(
            self._http,
            _PEER,
            "GET",
            f"{self._base}/models",
            failed="did not answer",
            client_timeout=self._ready_timeout,
            headers=self._headers,
        )
        if status != 200:
            raise _http_error(status, raw)


# -- stream parsing -------------------------------------------------------------------------


def _choice(data: bytes) -> dict[str, Any]:
    """The first choice of a chunk ({} for a chunk without one); an error frame raises."""
    payload = frame_json(data, _PEER)
    if not isinstance(payload, dict):
        return {}
    if payload.get("error") is not None or payload.get("object") == "error":  # vLLM, newer and older
        raise _error_of(payload, 200)
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


# -- errors ---------------------------------------------------------------------------------


def _http_error(status: int, raw: bytes) -> UpstreamError:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if status in _AUTH_STATUSES:
        # The server's own message may echo part of the key: never pass it on.
        return UpstreamAuth(f"the model server refused the API key (HTTP {status})")
    if isinstance(payload, dict):
        return _error_of(payload, status)
    return UpstreamError(f"the model server answered HTTP {status}")


def _error_of(payload: dict[str, Any], status: int) -> UpstreamError:
    """``{"error": {"message", "type", "code"}}`` (OpenAI, DeepSeek, DashScope, vLLM, Ollama),
    ``{"error": "text"}`` or ``{"message"|"detail": ...}``."""
    error = payload.get("error", payload)
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message") or error.get("detail") or error.get("type")
    else:
        code, message = None, error
    if code in _AUTH_STATUSES or code in ("invalid_api_key", "InvalidApiKey"):
        return UpstreamAuth("the model server refused the API key")
    text = str(message or "an error")[:_MAX_MESSAGE]
    where = f" (HTTP {status})" if status != 200 else ""
    return UpstreamError(f"the model server reported{where}: {text}")
