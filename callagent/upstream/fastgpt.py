"""FastGPT OpenAPI client: one pooled aiohttp session, every turn ``stream:true, detail:true``.

The stream is read with callagent's one SSE reader (``callagent.sse``), which has no
``readline`` line limit to break on a large frame.

What counts as speech: ``answer`` and ``fastAnswer`` content (never ``reasoning_content``),
and the question of an ``interactive`` node. The reply ends at ``workflowDuration`` (end of
speech: FastGPT is now saving the chat) or ``[DONE]``; ``error`` frames, non-200 envelopes
and an EOF before either are failures, each with its own error type.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
import structlog

from ..errors import UpstreamAuth, UpstreamError, UpstreamProtocol, UpstreamTimeout, UpstreamUnavailable
from ..sse import SSEError, SSEEvent, read_events
from .base import END_OF_SPEECH, KEEPALIVE, UpstreamChunk, UpstreamTurn, VariablesUpdate

log = structlog.get_logger(__name__)

_AUTH_CODES = {401, 403, 511, 514, 504000}

OPTIONS_KEY = "_fastgpt_options"
"""Session variable holding the options of a userSelect question awaiting the caller's answer."""

PATHS = {
    "legacy": {
        "delete_record": "/api/core/chat/item/delete",
        "delete_history": "/api/core/chat/delHistory",
        "init": "/api/core/chat/init",
    },
    "v2": {
        "delete_record": "/api/core/chat/record/delete",
        "delete_history": "/api/core/chat/history/delHistory",
        "init": "/api/core/chat/init",
    },
}


class FastGPTClient:
    name = "fastgpt"
    history_turns = 0  # FastGPT keeps the conversation itself (chatId)

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        app_id: str,
        paths: str = "legacy",
        connect_timeout: float = 3.0,
        request_timeout: float = 5.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._app_id = app_id
        self._paths = PATHS[paths]
        # No total deadline: the turn engine owns first-token, idle and turn deadlines.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
        # Every other call (readiness, deletes) is whole within this, so none can hang a caller.
        self._request_timeout = aiohttp.ClientTimeout(
            total=request_timeout, connect=connect_timeout, sock_connect=connect_timeout
        )

    def __repr__(self) -> str:
        return f"FastGPTClient(base_url={self._base!r}, app_id={self._app_id!r})"

    # -- turns -----------------------------------------------------------------------------

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        variables = dict(turn.variables)
        pending_options = variables.pop(OPTIONS_KEY, None)
        text = turn.text
        if isinstance(pending_options, list) and pending_options:
            text = choose_option(text, [str(o) for o in pending_options])
        body = {
            "chatId": turn.session_id,
            "stream": True,
            "detail": True,
            "responseChatItemId": turn.ai_record_id,
            "variables": variables,
            "messages": [{"role": "user", "content": text, "dataId": turn.human_record_id}],
        }
        response = await self._post_completions(orjson.dumps(body))
        async with response:
            if response.status != 200:
                raise _envelope_error(response.status, await _read_small(response))
            if "text/event-stream" not in response.headers.get("Content-Type", ""):
                raise _frame_or_envelope_error(await _read_small(response))
            ended = False
            asked = False
            async for event, data in _frames(response):
                if ended:
                    if data == b"[DONE]":
                        return
                    continue
                if event == b"interactive":
                    speech, options = _user_select(_json(data))
                    if options:
                        asked = True
                        yield VariablesUpdate({OPTIONS_KEY: options})
                    yield speech or KEEPALIVE
                    continue
                chunk = _chunk_of(event, data)
                if chunk is END_OF_SPEECH:
                    ended = True
                    if pending_options and not asked:
                        yield VariablesUpdate({OPTIONS_KEY: None})  # the question was answered
                    yield END_OF_SPEECH
                    continue
                if chunk is None:  # [DONE] before workflowDuration
                    return
                yield chunk
            if not ended:
                raise UpstreamProtocol("FastGPT closed the stream before [DONE]")

    async def _post_completions(self, body: bytes) -> aiohttp.ClientResponse:
        url = f"{self._base}/api/v1/chat/completions"
        headers = {**self._headers, "Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                return await self._http.post(url, data=body, headers=headers, timeout=self._timeout)
            except aiohttp.ClientConnectorError as e:
                # Nothing reached FastGPT: safe to try once more.
                reason = e.os_error.strerror or "refused"
                if attempt == 2:
                    raise UpstreamUnavailable(f"cannot connect to FastGPT: {reason}") from None
                log.warning("fastgpt_connect_retry", error=reason)
            except TimeoutError as e:
                if attempt == 2:
                    raise UpstreamUnavailable("connecting to FastGPT timed out") from e
            except aiohttp.ClientError as e:
                # The type only: a client error's text or repr may carry the request's headers.
                raise UpstreamProtocol(f"FastGPT request failed: {type(e).__name__}") from None
        raise AssertionError("unreachable")

    # -- records and sessions --------------------------------------------------------------

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        for record_id in record_ids:
            await self._envelope(
                "DELETE",
                self._paths["delete_record"],
                {"appId": self._app_id, "chatId": session_id, "contentId": record_id},
            )

    async def delete_session(self, session_id: str) -> None:
        await self._envelope("DELETE", self._paths["delete_history"], {"appId": self._app_id, "chatId": session_id})

    async def check_ready(self) -> None:
        await self._envelope("GET", self._paths["init"], {"appId": self._app_id, "chatId": "callagent-readyz"})

    async def _envelope(self, method: str, path: str, query: dict[str, str]) -> Any:
        try:
            async with self._http.request(
                method,
                self._base + path,
                params=query,
                headers=self._headers,
                timeout=self._request_timeout,
                allow_redirects=False,
            ) as response:
                raw = await _read_small(response)
        except aiohttp.ClientConnectorError as e:
            raise UpstreamUnavailable(f"cannot connect to FastGPT: {e.os_error.strerror or 'refused'}") from None
        except TimeoutError:
            raise UpstreamTimeout(f"FastGPT did not answer {path} within {self._request_timeout.total:g}s") from None
        except aiohttp.ClientError as e:
            # The type only: a client error's text or repr may carry the request's headers.
            raise UpstreamUnavailable(f"FastGPT request failed: {type(e).__name__}") from None
        if response.status != 200:
            raise _envelope_error(response.status, raw)
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocol(f"FastGPT answered {path} with non-JSON") from None
        if not isinstance(envelope, dict) or envelope.get("code") != 200:
            raise _envelope_error(200, raw)
        return envelope.get("data")


# -- stream parsing -------------------------------------------------------------------------


async def _frames(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    try:
        async for event in read_events(response):
            yield event
    except SSEError as e:
        raise UpstreamProtocol(f"FastGPT sent a broken stream: {e}") from None
    except (aiohttp.ClientError, ConnectionError) as e:
        raise UpstreamProtocol(f"FastGPT connection broke mid-stream: {type(e).__name__}") from None


def _chunk_of(event: bytes | None, data: bytes) -> UpstreamChunk | None:
    """What one frame means for the turn; ``None`` means the stream is complete."""
    if event in (b"answer", b"fastAnswer", None):
        if data == b"[DONE]":
            return None
        payload = _json(data)
        try:
            content = payload["choices"][0]["delta"].get("content")
        except (TypeError, KeyError, IndexError, AttributeError):
            return KEEPALIVE
        return content if isinstance(content, str) and content else KEEPALIVE
    if event == b"workflowDuration":
        return END_OF_SPEECH
    if event == b"updateVariables":
        payload = _json(data)
        return VariablesUpdate(payload) if isinstance(payload, dict) else KEEPALIVE
    if event == b"error":
        raise _stream_error(_json(data))
    return KEEPALIVE


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        log.warning("fastgpt_bad_frame", data=data[:200].decode(errors="replace"))
        return None


def _user_select(payload: Any) -> tuple[str, list[str]]:
    """A userSelect node, spoken (its description, then the options), and its option values."""
    try:
        params = payload["interactive"]["params"]
    except (TypeError, KeyError):
        return "", []
    description = str(params.get("description") or "")
    options = [str(o.get("value")) for o in params.get("userSelectOptions") or () if isinstance(o, dict)]
    return description + ("可选：" + "、".join(options) + "。" if options else ""), options


_ORDINALS = ("第一", "第二", "第三", "第四", "第五", "第六")


def choose_option(text: str, options: list[str]) -> str:
    """The option a caller's words pick, sent as the answer to a userSelect node.

    An option named in the words wins, then an ordinal ("第二个"), then the one option sharing
    the longest run of at least two characters with the words ("就是单车" picks "单车事故");
    otherwise the words go as they are.
    """
    for option in options:
        if option and option in text:
            return option
    for index, ordinal in enumerate(_ORDINALS[: len(options)]):
        if ordinal in text:
            return options[index]
    shared = [_longest_common_run(text, option) for option in options]
    best = max(shared, default=0)
    if best >= 2 and shared.count(best) == 1:
        return options[shared.index(best)]
    return text


def _longest_common_run(a: str, b: str) -> int:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match().size


# -- errors ---------------------------------------------------------------------------------


async def _read_small(response: aiohttp.ClientResponse, limit: int = 64 * 1024) -> bytes:
    return await response.content.read(limit)


def _stream_error(payload: Any) -> UpstreamError:
    if not isinstance(payload, dict):
        return UpstreamError("FastGPT reported an error")
    message = str(payload.get("message") or payload.get("statusText") or "FastGPT reported an error")
    if payload.get("code") in _AUTH_CODES:
        return UpstreamAuth(f"FastGPT refused the request: {message}")
    return UpstreamError(f"FastGPT: {message}")


def _frame_or_envelope_error(raw: bytes) -> UpstreamError:
    """A non-SSE body where a stream was expected: an ``event: error`` frame or an envelope."""
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            return _stream_error(_json(line[5:].strip()))
    return _envelope_error(200, raw)


def _envelope_error(status: int, raw: bytes) -> UpstreamError:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        error = _stream_error(payload)
        if status in _AUTH_CODES:
            return UpstreamAuth(error.msg)
        return error
    if status in _AUTH_CODES:
        return UpstreamAuth(f"FastGPT refused the request (HTTP {status})")
    return UpstreamError(f"FastGPT answered HTTP {status}")
