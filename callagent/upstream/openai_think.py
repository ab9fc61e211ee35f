"""Drop ``<think>...</think>`` blocks from streamed reply text.

Reasoning models served without a reasoning parser (Qwen3 or DeepSeek-R1 on vLLM or Ollama, a
Dify LLM node in front of them) write their chain of thought into the reply itself, between
``<think>`` and ``</think>``. The caller must never hear it, nor the blank lines the model puts
after the block. The tags arrive cut anywhere by
the stream, so the filter holds back a tail that could still be the start of a tag.
Used by the OpenAI-compatible and the Dify clients.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


class ThinkFilter:
    __slots__ = ("_held", "_inside", "_trim")

    def __init__(self) -> None:
        self._inside = False
        self._held = ""  # a tail that may be the start of the next tag
        self._trim = False  # a block just ended: drop the blanks that follow it

    def feed(self, text: str) -> str:
        """The speakable part of ``text`` (possibly empty)."""
        text = self._held + text
        self._held = ""
        out: list[str] = []
        while text:
            tag = CLOSE if self._inside else OPEN
            at = text.find(tag)
            if at >= 0:
                if not self._inside:
                    out.append(self._trimmed(text[:at]))
                text = text[at + len(tag) :]
                self._inside = not self._inside
                self._trim = not self._inside
                continue
            keep = _tag_prefix_len(text, tag)
            if not self._inside:
                out.append(self._trimmed(text[: len(text) - keep]))
            self._held = text[len(text) - keep :]
            break
        return "".join(out)

    def _trimmed(self, text: str) -> str:
        if self._trim:
            text = text.lstrip()
            self._trim = not text
        return text

    def finish(self) -> str:
        """At the end of the reply: a held tail that turned out not to be a tag."""
        held, inside = self._held, self._inside
        self._held, self._inside, self._trim = "", False, False
        return "" if inside else held


def _tag_prefix_len(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that starts ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
