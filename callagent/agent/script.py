"""The call script's schema: the frozen objects a checked ``intake.toml`` becomes.

A script is steps (questions and how their answers are handled), rules (intent -> where to go),
outcomes (how a call ends) and the replies said before asking again. ``loader`` builds these from
TOML and ``checker`` cross-checks them; ``dialogue`` walks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

from .extractors import Extractor
from .speaking import Voice
from .understanding import Intent, Speech, Utterance

CONTINUE: Final = "1002"
STAY: Final = "stay"

# The agent's own call state: one session variable holding a JSON object. Variables the script
# names with a leading "_" (``_vehicles``) are fields of it, not caller data.
AGENT: Final = "_agent"
INTERNAL: Final = "_"

ASK: Final = "ask"
CONFIRM: Final = "confirm"

TEMPLATE_FIELDS: Final = frozenset({"n", "label", "value", "partial"})


def default_script() -> Traversable:
    """The intake script shipped in the package."""
    return resources.files("callagent.data").joinpath("intake.toml")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ends: a stage code for the gateway and a last sentence."""

    name: str
    state: str
    say: str


@dataclass(frozen=True, slots=True)
class Rule:
    """When ``intent`` is heard (always, without one): set, capture, say, then go."""

    intent: Intent | None
    go: str
    say: str = ""
    set: Mapping[str, str | int] = field(default_factory=dict)
    also: tuple[str, ...] = ()
    again: bool = False  # with go = "stay": the question again after ``say`` (a question answered)

    def matches(self, utterance: Utterance) -> bool:
        return self.intent is None or self.intent.matches(utterance)


@dataclass(frozen=True, slots=True)
class Branch:
    """One way out of a step: taken when the variables hold ``when``'s values."""

    go: str
    when: Mapping[str, str] = field(default_factory=dict)
    say: str = ""

    def applies(self, variables: Callable[[str], Any]) -> bool:
        return all(str(variables(key) or "") == value for key, value in self.when.items())


@dataclass(frozen=True, slots=True)
class Step:
    """One question of the call and how its answers are handled (see intake.toml)."""

    name: str
    ask: str
    state: str = CONTINUE
    hint: str = ""
    rules: tuple[Rule, ...] = ()
    on_confused: str = ""
    extractor: Extractor | None = None
    slot: str = ""
    each: str = ""
    labels: tuple[str, ...] = ()
    confirm: str = ""
    partial: str = ""
    ack: str = ""
    next: tuple[Branch, ...] = ()

    def slot_for(self, n: int) -> str:
        return self.slot.replace("{n}", str(n))

    def label_for(self, n: int) -> str:
        return self.labels[min(n, len(self.labels)) - 1] if self.labels else ""


@dataclass(frozen=True, slots=True)
class Replies:
    """What is said before asking again: after silence, after a miss, after a rejected read-back."""

    silence: str
    not_understood: str
    retry: str


@dataclass(frozen=True, slots=True)
class Script:
    """A checked call script: every name it uses exists and fits where it is used."""

    source: str
    start: str
    max_misses: int
    on_confused: str
    replies: Replies
    anywhere: tuple[Rule, ...]
    steps: Mapping[str, Step]
    outcomes: Mapping[str, Outcome]
    yes: Intent | None
    no: Intent | None
    speech: Speech = field(default_factory=Speech)
    voice: Voice = field(default_factory=Voice)
    listen: tuple[str, ...] = ()  # steps whose slots are filled from whatever the caller says
    intents: Mapping[str, Intent] = field(default_factory=dict)
