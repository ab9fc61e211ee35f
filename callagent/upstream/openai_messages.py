"""The messages an OpenAI-compatible model sees: the system prompt, then the conversation.

callagent owns the conversation (the model server keeps none): it is rebuilt on every turn from
the session's transcript in the store, so any instance can serve the next turn.

The prompt is a template (``CALLAGENT_PROMPT_FILE``, else the packaged accident-intake prompt):
``{{name}}`` is replaced by the session variable ``name`` (strings as they are, other values as
JSON), ``{{name|text}}`` by ``text`` when the variable is absent, null or empty (blanks around
the name and the text are ignored). Variables whose
name starts with ``_`` are internal and never filled in. Anything else is kept literally.

History rules, so that strict servers (DeepSeek refuses two user messages in a row) accept it:

- an assistant message holds what the caller HEARD: the barge-in's ``spoken_text`` when there
  is one, else the reply text the gateway was sent; it starts with the turn's last stage tag so the model keeps
  seeing the tag format it must produce;
- a turn the caller heard nothing of (interrupted at once, or a reply that was empty) leaves
  no assistant message: its words are joined to the next user message;
- an empty utterance (silence) is sent as ``CALLAGENT_SILENCE_TEXT``;
- with ``CALLAGENT_INTERRUPT_RECORDS=delete`` an interrupted turn is left out entirely;
- deleted turns (``delete_last_turn``) are never passed in by the engine.

Reasoning never enters the history: only reply text is stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from ..settings import ConfigError
from ..store.base import TurnRecord

DEFAULT_PROMPT = "intake_prompt.txt"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.:\-]+)\s*(?:\|([^}]*))?\}\}")


class PromptTemplate:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def load(cls, path: str = "") -> PromptTemplate:
        """The template in ``path``, or the packaged one; a ConfigError naming the setting."""
        try:
            if path:
                return cls(Path(path).read_text(encoding="utf-8"))
            return cls(resources.files("callagent.data").joinpath(DEFAULT_PROMPT).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"CALLAGENT_PROMPT_FILE: cannot read {path or DEFAULT_PROMPT}: {e}") from None

    def render(self, variables: Mapping[str, Any]) -> str:
        def fill(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = None if name.startswith("_") else variables.get(name)
            if value is None or value == "":
                return (default or "").strip()
            return value if isinstance(value, str) else orjson.dumps(value).decode()

        return _PLACEHOLDER.sub(fill, self.text)


def build_messages(
    system: str,
    history: Sequence[TurnRecord],
    text: str,
    *,
    silence_text: str,
    drop_interrupted: bool = False,
) -> list[dict[str, str]]:
    """System prompt, the history as the caller lived it, then this turn's words."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system.strip() else []
    unanswered: list[str] = []  # caller words the caller heard no answer to
    for record in history:
        if drop_interrupted and record.status == "cancelled":
            continue
        unanswered.append(record.caller_text.strip() or silence_text)
        heard = heard_reply(record)
        if heard:
            messages.append({"role": "user", "content": "\n".join(unanswered)})
            messages.append({"role": "assistant", "content": heard})
            unanswered = []
    unanswered.append(text.strip() or silence_text)
    messages.append({"role": "user", "content": "\n".join(unanswered)})
    return messages


def heard_reply(record: TurnRecord) -> str:
    """What the caller heard of a turn's reply, with its last stage tag first ("" if nothing)."""
    heard = (record.spoken_text if record.spoken_text is not None else record.reply_text).strip()
    if not heard:
        return ""
    if record.stage_codes:
        return f"<state>{record.stage_codes[-1]}</state>{heard}"
    return heard
