"""Session variables <-> a Dify app's declared inputs and conversation variables.

Dify refuses what it did not declare or cannot type: a missing required input or a non-string
value for a text input is a 400, a conversation variable PUT with the wrong type too. So only
declared names are sent, each converted to its declared type; a value that cannot be converted
is left out (and logged by the client), never sent to fail the turn.

The internal session variables the Dify client keeps (hidden from ``get_info``):

- ``_dify_conversation_id``: the session's Dify conversation;
- ``_dify_variables``: ``{name: [variable_id, value_type]}`` of the conversation variables;
- ``_dify_pushed``: ``{name: value}``, each conversation variable's value as Dify last held it
  (pushed by callagent or read back after a reply).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

CONVERSATION_KEY = "_dify_conversation_id"
VARIABLES_KEY = "_dify_variables"
PUSHED_KEY = "_dify_pushed"

_TEXT_KINDS = ("text-input", "paragraph", "select")
_TRUE = {"true", "1", "yes", "on", "是"}
_FALSE = {"false", "0", "no", "off", "否"}


@dataclass(frozen=True, slots=True)
class InputField:
    kind: str  # text-input | paragraph | select | number | checkbox | json_object | file ...
    name: str
    options: tuple[str, ...] = ()
    max_length: int | None = None


def parse_input_form(parameters: Mapping[str, Any]) -> list[InputField]:
    """The fields of ``GET /v1/parameters``'s ``user_input_form``: ``[{"text-input": {...}}]``."""
    fields: list[InputField] = []
    for item in parameters.get("user_input_form") or ():
        if not isinstance(item, dict) or len(item) != 1:
            continue
        ((kind, spec),) = item.items()
        if not isinstance(spec, dict) or not isinstance(spec.get("variable"), str):
            continue
        options = tuple(str(o) for o in spec.get("options") or () if isinstance(o, str | int | float))
        max_length = spec.get("max_length")
        fields.append(
            InputField(str(kind), spec["variable"], options, max_length if isinstance(max_length, int) else None)
        )
    return fields


def declared_inputs(form: list[InputField], variables: Mapping[str, Any]) -> dict[str, Any]:
    """The first turn's ``inputs``: declared, present and convertible session variables."""
    inputs: dict[str, Any] = {}
    for field in form:
        value = variables.get(field.name)
        if value is None or field.name.startswith("_"):
            continue
        converted = _to_input(field, value)
        if converted is not None:
            inputs[field.name] = converted
    return inputs


def _to_input(field: InputField, value: Any) -> Any:
    if field.kind in _TEXT_KINDS:
        text = _as_text(value)
        if field.kind == "select" and field.options and text not in field.options:
            return None
        return text[: field.max_length] if field.max_length else text
    if field.kind == "number":
        return _as_number(value)
    if field.kind == "checkbox":
        return _as_bool(value)
    if field.kind == "json_object":
        return value if isinstance(value, dict) else None
    return None  # files and anything newer: not something a phone session holds


def to_variable_type(value_type: str, value: Any) -> Any:
    """``value`` as a conversation variable of ``value_type`` (None: not convertible)."""
    if value_type in ("string", "secret"):
        return _as_text(value)
    if value_type == "number":
        return _as_number(value)
    if value_type == "boolean":
        return _as_bool(value)
    if value_type == "object":
        return value if isinstance(value, dict) else None
    if value_type.startswith("array"):
        return value if isinstance(value, list) else None
    return None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() and "." not in value else number
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None
