"""``POST /api/v{1,2}/chat/completions`` and ``/api/v2/chat/stop``: one ``Run`` per call.

A run streams the brain's reply as the emulated release does (``workflowDuration``, then the
chat is saved, then the stop chunk, ``[DONE]`` and, on v1, ``flowResponses``) or folds it into
one JSON body, and saves the turn in the emulator's chat store, also when the client leaves
mid-run (at once, or when the workflow returns). The module is longer than most: a run's life
(refusals, the stream, the folded JSON, the save) reads top-down in one class.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import orjson
from aiohttp import web

from .faults import (
    CUT_SHORT,
    ERROR_FAULTS,
    INTERACTIVE_FAULTS,
    MALFORMED_FRAMES,
    REASONING_TEXT,
    SILENT_FAULTS,
    UNKNOWN_PAYLOADS,
)
from .feed import BrainFailed, BrainFeed, accepts, cut, message_text, nothing, with_big_text
from .records import guard, request_json
from .state import EMULATOR, REQUEST_BODY, Emulator, StreamLog, authorized, new_id, now_iso, text_value
from .wire import (
    FLUSH_BYTES,
    SSE_HEADERS,
    SseWriter,
    chunk_json,
    chunk_json_with_unknown_fields,
    envelope,
    error_body,
    error_frame,
    generic_error,
    json_response,
    known_error,
    reasoning_json,
    sse_frame,
    stop_json,
    until_client_leaves,
)


async def completions(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR]
    body = request[REQUEST_BODY]
    turn = Run(request, emu, body if isinstance(body, dict) else {})
    try:
        return await turn.respond()
    except ConnectionResetError:
        turn.client_left()
        return turn.response or web.Response()
    except asyncio.CancelledError:
        turn.client_left()
        raise
    finally:
        turn.end()


class Run:
    """One completions call: the run of the workflow and its response."""

    def __init__(self, request: web.Request, emu: Emulator, body: dict[str, Any]) -> None:
        self.request = request
        self.emu = emu
        self.body = body
        self.is_stream = bool(body.get("stream"))
        self.detail = bool(body.get("detail"))
        self.chat_id = str(body.get("chatId") or "")
        self.build = emu.build
        self.v2 = request.path.startswith("/api/v2/")
        self.fault = emu.take_fault()
        self.loop = asyncio.get_running_loop()
        self.log = StreamLog(self.chat_id, self.is_stream, self.detail, self.fault, self.loop.time())
        emu.streams.append(self.log)
        self.response: web.StreamResponse | None = None
        self.feed: BrainFeed | None = None
        self.running = False  # the workflow has started: a client leaving now still saves the turn
        self.persisted = False
        self.finalized = False  # saved, or failed for good: the chat is no longer generating
        self.finishing_later = False  # the client left; the workflow returns (and saves) later
        self.stopped = False
        self.stop_requested = asyncio.Event()
        self.resume: dict[str, Any] | None = None  # the interactive node this run answers
        self.asks = INTERACTIVE_FAULTS.get(self.fault or "")  # the node this run pauses at
        self.reply_parts: list[str] = []
        self.text = ""
        self.variables: dict[str, Any] = {}
        self.human_id = self.ai_id = ""

    # -- life cycle

    async def respond(self) -> web.StreamResponse:
        emu, fault = self.emu, self.fault
        if not authorized(self.request, emu):
            return self._refuse(error_body(514, "unAuthApiKey", "Api Key 不合法"), known=True)
        if self.build.validates_bodies and (problem := self._invalid()) is not None:
            self.log.outcome = "refused"
            return json_response(error_body(400, "invalidParams", problem), 400)
        if fault == "rate_limited":
            self.log.outcome = "refused"
            return json_response(error_body(429, "tooManyRequest", "请求过于频繁，请稍后再试"), 429)
        if self.build.chat_is_generating and self.chat_id and emu.generating(self.chat_id):
            return self._refuse(error_body(504001, "chatIsGenerating", "对话正在生成中"), known=True)
        messages = self.body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._refuse({"message": "messages is empty"}, known=False)
        if fault == "http500":
            self.log.outcome = "error"
            return generic_error("emulated internal error")
        if fault == "error_before":
            return await self._error_before()
        if fault == "slow_headers":
            await asyncio.sleep(emu.slow_headers_delay)
        self._begin(messages[-1])
        if self.is_stream:
            return await self._stream()
        return await self._json()

    def client_left(self) -> None:
        if self.log.outcome != "running":
            return
        self.log.outcome = "disconnected"
        self.log.disconnected_at = self.loop.time()
        if self.finalized or not self.running:
            return
        if (self.build.v1_stops_on_disconnect and not self.v2) or self.emu.finish_delay <= 0:
            self._persist()
            return
        # Up to 4.14.x (and v2 on 4.15) the workflow goes on without its client: the LLM stops
        # at its next chunk, but a slow node must finish before the run returns and is saved.
        self.finishing_later = True
        task = asyncio.get_running_loop().create_task(self._finish_later(), name=f"run-{self.ai_id}")
        self.emu.tasks.add(task)
        task.add_done_callback(self.emu.tasks.discard)

    async def _finish_later(self) -> None:
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), self.emu.finish_delay)
        finally:
            self._persist()

    def end(self) -> None:
        if not self.finishing_later:
            self._finalize()
        self.log.closed.set()

    def stop(self) -> None:
        """``/api/v2/chat/stop``: end the run early; the stream still ends normally."""
        self.stopped = True
        self.stop_requested.set()
        if self.feed is not None:
            self.feed.interrupt()

    def _finalize(self) -> None:
        if self.finalized:
            return
        self.finalized = True
        key = (self.emu.app_id, self.chat_id)
        runs = self.emu._runs.get(key)
        if runs is not None:
            runs.discard(self)
            if not runs:
                del self.emu._runs[key]

    def _invalid(self) -> str | None:
        """What a release validating request bodies (4.14.11+) rejects with HTTP 400."""
        body = self.request[REQUEST_BODY]
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        for key, kind in (("chatId", str), ("responseChatItemId", str), ("appId", str), ("stream", bool)):
            if body.get(key) is not None and not isinstance(body[key], kind):
                return f"{key} must be a {kind.__name__}"
        if "variables" in body and not isinstance(body["variables"], dict | None):
            return "variables must be an object"
        if "messages" in body and not isinstance(body["messages"], list):
            return "messages must be an array"
        return None

    def _finished(self) -> None:
        self.log.outcome = "completed"
        self.log.finished_at = self.loop.time()

    def _begin(self, last_message: Any) -> None:
        emu, body = self.emu, self.body
        self.text = message_text(last_message)
        data_id = last_message.get("dataId") if isinstance(last_message, dict) else None
        self.ai_id = str(body.get("responseChatItemId") or new_id())
        # 4.15 forces the Human record's dataId to the round's responseChatItemId.
        self.human_id = self.ai_id if self.build.human_id_is_response_id else str(data_id or new_id())
        chat = emu.chat(self.chat_id) if self.chat_id else None
        self.resume = chat.awaiting if chat else None  # only once the paused run was saved
        self.variables = {**(chat.variables if chat else {}), **self._request_variables()}
        if self.resume is not None and not accepts(self.resume, self.text):
            # An answer matching no option skips every branch: the run ends with no text.
            source: AsyncIterator[str | dict[str, Any]] = nothing()
        else:
            source = emu.brain.reply(self.chat_id, self.text, dict(self.variables))
        self.feed = BrainFeed(with_big_text(source) if self.fault == "big" else source)
        self.running = True
        emu._runs.setdefault((emu.app_id, self.chat_id), set()).add(self)

    def _request_variables(self) -> dict[str, Any]:
        given = self.body.get("variables")
        variables = dict(given) if isinstance(given, dict) else {}
        declared = self.emu.declared_variables
        if not self.build.declared_variables or declared is None:
            return variables
        # 4.11.1+: only declared variables, matched by label first, then key, kept by key.
        by_label = {label: key for key, label in declared.items()}
        kept: dict[str, Any] = {}
        for name, value in variables.items():
            key = by_label.get(name) or (name if name in declared else None)
            if key is not None:
                kept[key] = value
        return kept

    # -- failures before any output

    def _refuse(self, error: dict[str, Any], *, known: bool) -> web.Response:
        self.log.outcome = "refused"
        if self.is_stream:
            # No SSE headers yet: one error frame in an ordinary JSON-typed body, HTTP 200.
            return web.Response(body=error_frame(error), content_type="application/json")
        if known:
            return known_error(self.emu, error["code"], error["statusText"], error["message"])
        return generic_error(error["message"])

    async def _error_before(self) -> web.StreamResponse:
        self.log.outcome = "error"
        error = error_body(510, "insufficientQuota", "账号余额不足")
        if not self.is_stream:
            return known_error(self.emu, error["code"], error["statusText"], error["message"])
        self.response = web.StreamResponse(headers=SSE_HEADERS)
        await self.response.prepare(self.request)
        await self.response.write(error_frame(error))
        await self.response.write_eof()
        return self.response

    # -- stream

    async def _stream(self) -> web.StreamResponse:
        fault, feed = self.fault, self.feed
        assert feed is not None
        response = self.response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(self.request)
        writer = SseWriter(response, self.log, detail=self.detail, heartbeat=self.emu.heartbeat_interval)
        try:
            if fault in ("no_first_token", "heartbeats_only"):
                await self._say_nothing(writer)
            if self.build.agent_events:
                writer.event("chatTitle", orjson.dumps({"title": self.text[:20]}))
            if self.v2:
                writer.event("flowNodeResponse", orjson.dumps(self._node_responses()[0]))
            writer.event("flowNodeStatus", orjson.dumps({"status": "running", "name": "AI 对话"}))
            cut_short = await self._stream_reply(writer)
        except BrainFailed as e:
            return await self._fail(writer, {"message": e.args[0]})
        finally:
            await feed.close()
        if cut_short or fault in CUT_SHORT:
            return await self._cut_short(writer)
        if fault == "payment_pause" and not self.build.payment_pause:
            return await self._fail(writer, error_body(500000, "aiPointsNotEnough", "AI 积分不足"))
        if self.asks is not None:
            writer.event("interactive", orjson.dumps({"interactive": self.asks}))
        nodes = self._node_responses()
        if self.v2:
            writer.event("flowNodeResponse", orjson.dumps(nodes[1]))
        if self.build.workflow_duration:
            duration = round(self.loop.time() - self.log.started, 2)
            writer.event("workflowDuration", orjson.dumps({"durationSeconds": duration}))
        await writer.flush()
        if self.emu.save_delay > 0:
            await asyncio.sleep(self.emu.save_delay)
        self._persist()  # FastGPT saves the chat between workflowDuration and the stop chunk
        writer.event("answer", stop_json(self.build.stop_delta_null))
        flow_responses = not self.v2
        if flow_responses and self.build.flow_responses_before_done:
            writer.event("flowResponses", orjson.dumps(nodes))
        writer.event("answer", b"[DONE]")
        if flow_responses and not self.build.flow_responses_before_done:
            writer.event("flowResponses", orjson.dumps(nodes))
        await writer.flush()
        await response.write_eof()
        self._finished()
        return response

    async def _fail(self, writer: SseWriter, error: dict[str, Any]) -> web.StreamResponse:
        """A fatal error mid-run: an ``error`` frame, then the end of the body without ``[DONE]``."""
        assert self.response is not None
        writer.event("error", orjson.dumps(error))
        await writer.flush()
        await self.response.write_eof()
        self.log.outcome = "error"
        return self.response

    async def _say_nothing(self, writer: SseWriter) -> None:
        """``no_first_token`` / ``heartbeats_only``: until the client leaves (never returns)."""
        interval = self.emu.heartbeat_interval
        if self.fault == "no_first_token" or interval <= 0:
            await until_client_leaves(self.request)
        while True:
            await writer.pause(interval)

    async def _stream_reply(self, writer: SseWriter) -> bool:
        """Send the brain's reply; True when a cut-short fault struck before its end."""
        emu, fault, feed = self.emu, self.fault, self.feed
        assert feed is not None
        answer = "fastAnswer" if fault == "fast_answer" else "answer"
        sent = 0
        if fault == "unknown_events":
            self._send_unknown(writer, 0)
        while not self.stopped and (item := await feed.next(writer)) is not None:
            if isinstance(item, dict):
                self._update_variables(item)
                writer.event("updateVariables", orjson.dumps(self.variables))
                continue
            for piece in cut(item, max(1, emu.chunk_chars)):
                await writer.pause(emu.first_chunk_delay if sent == 0 else emu.chunk_delay)
                if fault == "reasoning" and sent % 2 == 0:
                    for thought in cut(REASONING_TEXT, 5):
                        writer.event("answer", reasoning_json(thought))
                if fault == "unknown_events":
                    writer.speech(answer, chunk_json_with_unknown_fields(piece, sent))
                else:
                    writer.speech(answer, chunk_json(piece))
                self.reply_parts.append(piece)
                sent += 1
                if fault == "malformed":
                    writer.raw(MALFORMED_FRAMES[sent % len(MALFORMED_FRAMES)])
                elif fault == "unknown_events" and sent % 3 == 0:
                    self._send_unknown(writer, sent // 3)
                if fault in CUT_SHORT and sent >= emu.fault_after_chunks:
                    return True
                if self.stopped:
                    break
                await writer.flush(at_least=FLUSH_BYTES)
        return False

    def _send_unknown(self, writer: SseWriter, n: int) -> None:
        name, payload = UNKNOWN_PAYLOADS[n % len(UNKNOWN_PAYLOADS)]
        if self.detail:
            writer.raw(sse_frame(name, orjson.dumps(payload)))
        else:
            writer.raw(sse_frame(None, orjson.dumps({"unknownKind": name, **payload})))

    async def _cut_short(self, writer: SseWriter) -> web.StreamResponse:
        response = self.response
        assert response is not None
        fault = self.fault
        if fault == "error_mid":
            writer.event("error", orjson.dumps({"message": "emulated workflow failure"}))
        await writer.flush()
        if fault == "stall":
            await until_client_leaves(self.request)
        if fault == "abort":
            self.log.outcome = "aborted"
            self._persist()
            if self.request.transport is not None:
                self.request.transport.abort()
            return response
        await response.write_eof()
        self.log.outcome = "error" if fault == "error_mid" else "eof"
        if fault == "eof":
            self._persist()
        return response

    # -- non-stream

    async def _json(self) -> web.StreamResponse:
        emu, fault, feed = self.emu, self.fault, self.feed
        assert feed is not None
        if fault in SILENT_FAULTS:
            await feed.close()
            await until_client_leaves(self.request)
        if fault == "abort":
            await feed.close()
            self.log.outcome = "aborted"
            if self.request.transport is not None:
                self.request.transport.abort()
            return web.Response()
        try:
            while not self.stopped and (item := await feed.next(None)) is not None:
                if isinstance(item, dict):
                    self._update_variables(item)
                else:
                    self.reply_parts.append(item)
        except BrainFailed as e:
            self.log.outcome = "error"
            return generic_error(e.args[0])
        finally:
            await feed.close()
        chunks = len(cut("".join(self.reply_parts), max(1, emu.chunk_chars)))
        delay = emu.first_chunk_delay + emu.chunk_delay * max(0, chunks - 1)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "error_mid":
            self.log.outcome = "error"
            return generic_error("emulated workflow failure")
        self._persist()
        body = orjson.dumps(self._json_body())
        if fault == "malformed":
            body = b"<html><body>502 Bad Gateway</body></html>" + body[:40]
        if fault == "eof":
            return await self._truncated_json(body)
        self._finished()
        return web.Response(body=body, content_type="application/json")

    def _json_body(self) -> dict[str, Any]:
        reply = "".join(self.reply_parts)
        content: str | list[dict[str, Any]] = reply
        if self.fault == "array_content":
            half = len(reply) // 2
            # The newest builds drop `type`: the second item is identified by its key alone.
            content = [text_value(reply[:half]), {"text": {"content": reply[half:]}}]
        elif self.fault == "reasoning":
            content = [{"type": "reasoning", "reasoning": {"content": REASONING_TEXT}}, text_value(reply)]
        elif self.asks is not None:
            content = [text_value(reply), {"type": "interactive", "interactive": self.asks}]
        message: dict[str, Any] = {"role": "assistant", "content": content}
        out: dict[str, Any] = {
            "id": self.chat_id,
            "model": "",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1},
            "choices": [{"message": message, "finish_reason": "stop", "index": 0}],
        }
        if self.detail:
            out["responseData"] = self._node_responses()
            out["newVariables"] = self.variables
        if self.fault == "unknown_events":
            out["chatTitle"] = "交通事故"
            message["responseValueId"] = "rv-1"
        return out

    async def _truncated_json(self, body: bytes) -> web.StreamResponse:
        response = self.response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(self.request)
        await response.write(body[: len(body) // 2])
        await response.write_eof()
        self.log.outcome = "eof"
        return response

    # -- the chat store

    def _update_variables(self, update: dict[str, Any]) -> None:
        self.variables.update(update)
        if self.chat_id:
            self.emu._stored_chat(self.chat_id).variables = dict(self.variables)

    def _persist(self) -> None:
        """Save the turn as FastGPT does when a run ends (also when the client left mid-run)."""
        if not self.running or self.persisted or not self.chat_id or self.fault in ERROR_FAULTS:
            self._finalize()
            return
        self.persisted = True
        self._finalize()
        chat = self.emu._stored_chat(self.chat_id)
        now = now_iso()
        reply = "".join(self.reply_parts)
        chat.variables = dict(self.variables)
        if self.resume is not None and chat.records and chat.records[-1]["obj"] == "AI":
            # Answering an interactive node resumes the run: no new pair, the last AI record grows.
            chat.records[-1]["value"].append(text_value(reply))
        else:
            chat.records.append(self._record(self.human_id, "Human", [text_value(self.text)], now))
            values = [text_value(reply)]
            if self.asks is not None:
                values.append({"type": "interactive", "interactive": self.asks})
            chat.records.append(self._record(self.ai_id, "AI", values, now))
        chat.awaiting = self.asks
        chat.node_responses[self.ai_id] = self._node_responses()
        chat.update_time = now
        chat.title = chat.title or self.text[:20] or "新对话"

    @staticmethod
    def _record(data_id: str, obj: str, value: list[dict[str, Any]], time: str) -> dict[str, Any]:
        return {"_id": new_id(), "dataId": data_id, "obj": obj, "value": value, "time": time}

    def _node_responses(self) -> list[dict[str, Any]]:
        return [
            {
                "id": "workflowStart",
                "nodeId": "workflowStart",
                "moduleName": "流程开始",
                "moduleType": "workflowStart",
                "runningTime": 0,
            },
            {
                "id": "chatNode",
                "nodeId": "chatNode",
                "moduleName": "AI 对话",
                "moduleType": "chatNode",
                "runningTime": round(self.loop.time() - self.log.started, 2),
                "totalPoints": 0,
                "model": "emulator",
                "query": self.text,
                "textOutput": "".join(self.reply_parts),
            },
        ]


async def stop_chat(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    body = request_json(request)
    if (refused := guard(request, emu, body.get("appId"))) is not None:
        return refused
    for turn in list(emu._runs.get((emu.app_id, str(body.get("chatId") or "")), ())):
        turn.stop()
    return envelope()
