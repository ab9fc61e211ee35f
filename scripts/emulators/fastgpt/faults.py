"""Fault modes: what turns the next completions calls into a misbehaving upstream.

Set per app (``create_emulator_app(fault=...)``) or at run time (``Emulator.set_fault``,
``POST /__emulator/fault``). The canned payloads the faults send live here too.
"""

from __future__ import annotations

from typing import Final

FAULT_MODES: Final = frozenset(
    {
        "http500",  # HTTP 500 with an error envelope
        "error_before",  # HTTP 200 and one `event: error` frame before any output
        "error_mid",  # a few chunks, `event: error`, close without [DONE]
        "eof",  # a few chunks, then the body ends without [DONE] and without error
        "no_first_token",  # headers, then silence until the client leaves
        "stall",  # a few chunks, then silence until the client leaves
        "heartbeats_only",  # only empty-content answer chunks until the client leaves
        "malformed",  # garbage frames and lines interleaved, the stream still completes
        "unknown_events",  # unknown events and fields interleaved, the stream still completes
        "big",  # about 1 MB of reply text
        "array_content",  # non-stream content as an array of value items
        "reasoning",  # `delta.reasoning_content` chunks interleaved (never to be spoken)
        "fast_answer",  # the reply as `fastAnswer` events
        "slow_headers",  # Emulator.slow_headers_delay (10 s) before the response starts
        "abort",  # the TCP connection is aborted mid-stream
        "interactive",  # a userSelect `interactive` node ends the run; the next turn resumes it
        "interactive_form",  # a userInput (form) node ends the run; the answer is a JSON object
        "interactive_nested",  # the userSelect node wrapped in childrenInteractive > loopInteractive
        "interactive_unknown",  # an interactive node of a type nobody knows, nothing to ask
        "payment_pause",  # out of AI points mid-run: `paymentPause` (4.14.1+), an error frame before
        "rate_limited",  # HTTP 429 JSON: the team's rate limit
    }
)
CUT_SHORT: Final = frozenset({"error_mid", "eof", "stall", "abort"})
ERROR_FAULTS: Final = frozenset({"http500", "error_before", "error_mid"})
SILENT_FAULTS: Final = frozenset({"no_first_token", "stall", "heartbeats_only"})

# About 1 MB of UTF-8 (36 bytes a sentence).
BIG_TEXT: Final = "这是一段很长的测试文本。" * 29_000
REASONING_TEXT: Final = "用户报告了交通事故，先确认是否有人受伤。"
INTERACTIVE: Final = {
    "type": "userSelect",
    "entryNodeIds": ["userSelect"],
    "memoryEdges": [],
    "nodeOutputs": [],
    "params": {
        "description": "请问是单车事故还是多车事故？",
        "userSelectOptions": [
            {"key": "option1", "value": "单车事故"},
            {"key": "option2", "value": "多车事故"},
        ],
    },
}
FORM: Final = {
    "type": "userInput",
    "entryNodeIds": ["formInput"],
    "memoryEdges": [],
    "nodeOutputs": [],
    "params": {
        "description": "请补充事故信息。",
        "inputForm": [
            {"type": "input", "key": "plate", "label": "车牌号", "required": True, "list": []},
            {"type": "numberInput", "key": "cars", "label": "车辆数", "required": True, "list": []},
            {
                "type": "select",
                "key": "injured",
                "label": "是否有人受伤",
                "required": True,
                "list": [{"label": "有", "value": "有人受伤"}, {"label": "无", "value": "无人受伤"}],
            },
        ],
    },
}
NESTED: Final = {
    "type": "childrenInteractive",
    "params": {
        "childrenResponse": {
            "type": "loopInteractive",
            "params": {"loopResult": [], "childrenResponse": INTERACTIVE, "currentIndex": 0},
        }
    },
}
UNKNOWN_NODE: Final = {"type": "quantumInteractive", "entryNodeIds": ["q"], "params": {}}
PAYMENT_PAUSE: Final = {"type": "paymentPause", "params": {"description": "chat:balance_not_enough_pause"}}
WRAPPERS: Final = frozenset({"childrenInteractive", "toolChildrenInteractive", "loopInteractive", "loopRunInteractive"})
INTERACTIVE_FAULTS: Final = {
    "interactive": INTERACTIVE,
    "interactive_form": FORM,
    "interactive_nested": NESTED,
    "interactive_unknown": UNKNOWN_NODE,
    "payment_pause": PAYMENT_PAUSE,
}


MALFORMED_FRAMES: Final = (
    # Cut off inside a string: a parser that salvages it would speak 乱码.
    b'event: answer\ndata: {"id":"","object":"","choices":[{"delta":{"role":"assistant","content":"'
    + "乱码".encode()
    + b"\n\n",
    b"this line is not part of any frame\n\n",
    b": a comment line\n\n",
    b"event: answer\ndata: not json at all\n\n",
    b"data:\n\n",
    b'event: flowNodeStatus\ndata: {"status":"running","name":\n\n',
    b'event: answer\r\ndata: {"choices": [\r\n\r\n',
    b"\n\n",
)

UNKNOWN_PAYLOADS: Final = (
    (
        "toolCall",
        {
            "tool": {
                "id": "call-1",
                "toolName": "查询路况",
                "toolAvatar": "",
                "functionName": "road",
                "params": "",
                "response": "",
            }
        },
    ),
    (
        "toolParams",
        {"tool": {"id": "call-1", "toolName": "", "toolAvatar": "", "params": '{"road":"G2"}', "response": ""}},
    ),
    ("toolResponse", {"tool": {"id": "call-1", "toolName": "", "toolAvatar": "", "params": "", "response": "畅通"}}),
    ("stepTitle", {"stepId": "step-1", "title": "分析事故"}),
    ("agentPlan", {"plan": {"steps": [{"id": "step-1", "title": "分析事故"}]}}),
    ("chatTitle", {"title": "交通事故"}),
)
