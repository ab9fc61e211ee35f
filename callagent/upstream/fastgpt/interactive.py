"""FastGPT's interactive nodes, voiced: the question spoken, the caller's words turned into the answer.

A workflow that reaches an interactive node pauses and streams an ``interactive`` event; the
next completions call on the chat resumes it, its message being the answer. On a phone line:

- ``userSelect``: the description and the options are spoken; the caller's words are mapped to
  one option's value (the only answer FastGPT accepts: any other text skips every branch and
  ends the run in silence). Words that match no option are never sent: callagent asks again.
- ``userInput`` (a form): each field is asked for in turn, callagent collecting the answers
  itself; once every field has one, the JSON object keyed by the field keys is sent.
- wrappers (``childrenInteractive``, ``toolChildrenInteractive``, ``loopInteractive``,
  ``loopRunInteractive``) carry the real node in ``params.childrenResponse``, possibly nested.
- ``agentPlanAskQuery`` (agents): its ``content`` is spoken; the next words go as they are.
- ``paymentPause`` (the team ran out of AI points) is an ``UpstreamQuota`` failure, and any
  other node with nothing to ask an ``UpstreamProtocol`` failure: the caller hears the
  fallback, never an untranslated key.

The question awaiting an answer is kept in the session variable ``INTERACTIVE_KEY`` (internal:
its ``_`` prefix keeps it out of ``get_info`` and out of what is sent to FastGPT).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from ...errors import UpstreamProtocol, UpstreamQuota

INTERACTIVE_KEY = "_fastgpt_interactive"
WRAPPERS = frozenset({"childrenInteractive", "toolChildrenInteractive", "loopInteractive", "loopRunInteractive"})
_MAX_DEPTH = 16
_ORDINALS = ("第一", "第二", "第三", "第四", "第五", "第六", "第七", "第八", "第九", "第十")
_NEGATIONS = ("没", "不", "无", "非")
_SKIP_WORDS = ("没有", "跳过", "不知道", "不清楚")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def question_of(payload: Any) -> dict[str, Any]:
    """The state of the question an ``interactive`` event asks (raises when it cannot be voiced)."""
    node = _unwrap(payload.get("interactive") if isinstance(payload, dict) else None)
    kind = node.get("type")
    params: dict[str, Any] = node["params"] if isinstance(node.get("params"), dict) else {}
    description = str(params.get("description") or "")
    if kind == "paymentPause":
        raise UpstreamQuota("FastGPT paused the run: the team is out of AI points")
    if kind == "userSelect":
        options = _values(params.get("userSelectOptions"))
        if options:
            return {"type": "userSelect", "description": description, "options": options}
    elif kind == "userInput":
        fields = [_field(item) for item in params.get("inputForm") or () if isinstance(item, dict) and item.get("key")]
        if fields:
            return {"type": "userInput", "description": description, "fields": fields, "answers": {}}
    elif kind == "agentPlanAskQuery":
        content = str(params.get("content") or "")
        if content:
            return {"type": "ask", "description": content, "options": _values(params.get("options"))}
    raise UpstreamProtocol(f"FastGPT paused at an interactive node callagent cannot voice (type {kind!r})")


def speech(question: dict[str, Any]) -> str:
    """What the caller hears of a question."""
    description = str(question.get("description") or "")
    if question["type"] == "userInput":
        return description + _ask_field(_next_field(question))
    return description + _options_text(question.get("options") or [])


@dataclass(slots=True, frozen=True)
class Step:
    """What to do with the caller's words while a question is pending.

    ``send`` is the answer to send to FastGPT (the run resumes); when it is None callagent
    answers the caller itself with ``speech`` and keeps ``state`` as the pending question.
    """

    send: str | None
    speech: str = ""
    state: dict[str, Any] | None = None


def answer(question: dict[str, Any], text: str) -> Step:
    kind = question["type"]
    if kind == "userInput":
        return _fill_form(question, text)
    options = question.get("options") or []
    choice = choose_option(text, options) if options else None
    if choice is not None:
        return Step(choice)
    if kind == "ask":
        return Step(text)
    return Step(None, "抱歉，没有听清您的选择。" + speech(question), question)


def choose_option(text: str, options: list[str]) -> str | None:
    """The option a caller's words pick, or None.

    An option named in the words wins, then an ordinal ("第二个"), then the one option sharing
    the longest run of at least two characters with the words ("就是单车" picks "单车事故").
    An option the words negate ("没有人受伤" for "有人受伤") is never picked.
    """
    negated = {o for o in options if o and any(n + o in text for n in _NEGATIONS)}
    for option in options:
        if option and option in text and option not in negated:
            return option
    for index, ordinal in enumerate(_ORDINALS[: len(options)]):
        if ordinal in text:
            return options[index]
    shared = [0 if option in negated else _longest_common_run(text, option) for option in options]
    best = max(shared, default=0)
    if best >= 2 and shared.count(best) == 1:
        return options[shared.index(best)]
    return None


# -- forms ----------------------------------------------------------------------------------


def _fill_form(question: dict[str, Any], text: str) -> Step:
    field = _next_field(question)
    value = _field_value(field, text)
    if value is None:
        return Step(None, "抱歉，没有听清。" + _ask_field(field), question)
    answers = {**question["answers"], field["key"]: value}
    state = {**question, "answers": answers}
    following = _next_field(state)
    if following:
        return Step(None, _ask_field(following), state)
    return Step(orjson.dumps(answers).decode())


def _field(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": str(item["key"]),
        "label": str(item.get("label") or item["key"]),
        "type": str(item.get("type") or "input"),
        "required": bool(item.get("required")),
        "options": _values(item.get("list")),
    }


def _next_field(question: dict[str, Any]) -> dict[str, Any]:
    for field in question["fields"]:
        if field["key"] not in question["answers"]:
            return dict(field)
    return {}


def _ask_field(field: dict[str, Any]) -> str:
    if not field:
        return ""
    return f"请说一下{field['label']}。" + _options_text(field["options"])


def _field_value(field: dict[str, Any], text: str) -> Any:
    """The caller's words as the field's value; None: ask again."""
    words = text.strip()
    if not field["required"] and any(w in words for w in _SKIP_WORDS):
        return ""
    if field["options"]:
        return choose_option(words, field["options"])
    if field["type"] == "numberInput":
        number = _NUMBER.search(words)
        if number is None:
            return None
        return float(number.group()) if "." in number.group() else int(number.group())
    return words or None


# -- helpers --------------------------------------------------------------------------------


def _unwrap(node: Any) -> dict[str, Any]:
    for _ in range(_MAX_DEPTH):
        if not isinstance(node, dict) or node.get("type") not in WRAPPERS:
            break
        params = node.get("params")
        node = params.get("childrenResponse") if isinstance(params, dict) else None
    return node if isinstance(node, dict) else {}


def _values(items: Any) -> list[str]:
    """Option values of ``[{key, value}]`` or ``[{label, value}]`` lists (or plain strings)."""
    values = []
    for item in items if isinstance(items, list) else ():
        value = item.get("value") if isinstance(item, dict) else item
        if isinstance(value, str | int | float) and str(value):
            values.append(str(value))
    return values


def _options_text(options: list[str]) -> str:
    return "可选：" + "、".join(options) + "。" if options else ""


def _longest_common_run(a: str, b: str) -> int:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match().size
