"""The dialogue state machine: one turn of one call, from where the call stands to the reply.

The agent is stateless. Where a call stands (current step, confirm phase, vehicle being asked
about, misses in a row, digits heard so far, how it ended) lives in ONE session variable,
``_agent``, a JSON object: a leading ``_`` marks a variable as internal, so the gateway's
``get_info`` and a workflow never see it. Variables the script names with a leading ``_``
(``_vehicles``) are fields of that object too. The collected slots (``hphm1``.., ``sjhm``,
``sgdd``, ``sgcl``, ``srsw``) are ordinary variables. Each turn reads the variables and yields the
ones it changed, so a call survives restarts, may move between processes that share the store,
and a deleted turn is undone by restoring the values it overwrote.

One turn, in order: a call that has ended hears its ending again; the ``anywhere`` rules
(transfer, injury, questions back, "say that again") come next; then the ``listen`` steps fill
their empty slots from anything said in passing; then the current step: a pending confirmation,
the step's extractor, the step's ``when`` rules; nothing matched is a miss (silence counts too),
and too many misses in a row end the call. An extractor reads what follows a correction inside
the utterance ("沪A12345，不对，是沪A12346") before the whole utterance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .extractors import Extraction
from .script import AGENT, ASK, CONFIRM, CONTINUE, INTERNAL, STAY, Outcome, Rule, Script, Step
from .understanding import MAX_UTTERANCE, Utterance

# Fields of the ``_agent`` object (a script's own ``_name`` variables join them as ``name``).
STEP: Final = "_step"
PHASE: Final = "_phase"
MISSES: Final = "_misses"
VEHICLE: Final = "_vehicle"
OUTCOME: Final = "_outcome"
PARTIAL: Final = "_partial"  # input held by an accumulating extractor (phone digits, a plate's start)

_MAX_SKIPS: Final = 32  # slots already filled that one turn may walk past


@dataclass(frozen=True, slots=True)
class AgentReply:
    """The agent's answer to one utterance."""

    state: str
    text: str
    variables: dict[str, Any]  # the variables this turn changed

    @property
    def tagged(self) -> str:
        return f"<state>{self.state}</state>{self.text}"

    def pieces(self, size: int) -> list[str]:
        """The tagged reply cut into pieces of ``size`` characters, the tag whole in the first."""
        tag = f"<state>{self.state}</state>"
        head = tag + self.text[:size]
        return [head, *(self.text[start : start + size] for start in range(size, len(self.text), size))]


def _agent_state(value: Any) -> dict[str, str | int]:
    """The ``_agent`` object as stored, keeping only the strings and integers a call writes."""
    if not isinstance(value, dict):
        return {}
    return {
        key: item
        for key, item in value.items()
        if isinstance(key, str) and isinstance(item, str | int) and not isinstance(item, bool)
    }


def as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


class Call:
    """One turn of one call: where the call stands, what it hears, says and changes."""

    def __init__(self, script: Script, variables: Mapping[str, Any]) -> None:
        self.script = script
        self._variables = variables
        self._agent = _agent_state(variables.get(AGENT))
        self._agent_changed = False
        self.changes: dict[str, Any] = {}
        self._said: list[str] = []
        self.state = CONTINUE
        self._missed = False
        name = self.get(STEP)
        self.step = script.steps[name if isinstance(name, str) and name in script.steps else script.start]
        self.n = 1
        if self.step.each:
            self.n = min(max(as_int(self.get(VEHICLE), 1), 1), len(self.step.labels))
        confirming = self.get(PHASE) == CONFIRM and self.step.confirm and self._value()
        self.phase = CONFIRM if confirming else ASK

    # -- variables

    def get(self, key: str) -> Any:
        if key.startswith(INTERNAL):
            return self._agent.get(key[1:])
        return self.changes[key] if key in self.changes else self._variables.get(key)

    def set(self, key: str, value: Any) -> None:
        if self.get(key) == value:
            return
        if key.startswith(INTERNAL):
            self._agent[key[1:]] = value
            self._agent_changed = True
        else:
            self.changes[key] = value

    def _clear(self, key: str) -> None:
        if self.get(key):
            self.set(key, "")

    def _value(self, n: int | None = None) -> str:
        value = self.get(self.step.slot_for(n or self.n)) if self.step.slot else None
        return value.replace("<", "").replace(">", "") if isinstance(value, str) else ""  # read back, never a tag

    @property
    def misses(self) -> int:
        return max(as_int(self.get(MISSES), 0), 0)

    # -- the turn

    def handle(self, utterance: Utterance) -> AgentReply:
        self._respond(utterance)
        self.set(STEP, self.step.name)
        if not self._missed and self.misses:
            self.set(MISSES, 0)
        if self._agent_changed:
            self.changes[AGENT] = dict(self._agent)
        return AgentReply(self.state, "".join(self._said), self.changes)

    def _respond(self, utterance: Utterance) -> None:
        ended = self.get(OUTCOME)
        if isinstance(ended, str) and ended in self.script.outcomes:
            self._finish(self.script.outcomes[ended])
            return
        for rule in self.script.anywhere:
            if rule.matches(utterance):
                self._follow(rule, utterance)
                return
        self._listen(utterance)
        if self.phase == CONFIRM and self._confirm(utterance):
            return
        if self.phase == ASK and self.step.extractor is not None and self._extract(utterance):
            return
        for rule in self.step.rules:
            if rule.matches(utterance):
                self._follow(rule, utterance)
                return
        self._miss(silent=utterance.silent)

    def _follow(self, rule: Rule, utterance: Utterance) -> None:
        for key, value in rule.set.items():
            self.set(key, value)
        for name in rule.also:
            self._capture(self.script.steps[name], utterance)
        self._say(rule.say)
        if rule.go != STAY:
            self._go(rule.go)
            return
        if not rule.say or rule.again:
            self._say(self._question())
        self.state = self.step.state

    def _go(self, target: str, skips: int = 0) -> None:
        if target in self.script.outcomes:
            self._finish(self.script.outcomes[target])
        else:
            self._enter(self.script.steps[target], 1, skips)

    def _enter(self, step: Step, n: int, skips: int = 0) -> None:
        if step is not self.step:
            self._clear(PARTIAL)
        self.step, self.n, self.phase = step, n, ASK
        self.set(STEP, step.name)
        self.set(PHASE, ASK)
        if step.each:
            self.set(VEHICLE, n)
        self.state = step.state
        if step.slot and self._value() and skips < _MAX_SKIPS:  # known already (an earlier answer, set_info)
            if step.confirm:
                self._ask_to_confirm()
            else:
                self._advance(skips + 1)
            return
        self._say(step.ask)

    def _advance(self, skips: int = 0) -> None:
        """The current slot is settled: the next repeat of the step, or the next step."""
        step = self.step
        if step.each and self.n < self._repeats():
            self._enter(step, self.n + 1, skips)
            return
        branch = next(branch for branch in step.next if branch.applies(self.get))
        self._say(branch.say)
        self._go(branch.go, skips)

    def _repeats(self) -> int:
        return min(max(as_int(self.get(self.step.each), 1), 1), len(self.step.labels))

    def _accept(self) -> None:
        self._say(self.step.ack)
        self._advance()

    def _finish(self, outcome: Outcome) -> None:
        self.set(OUTCOME, outcome.name)
        self._say(outcome.say)
        self.state = outcome.state

    def _miss(self, *, silent: bool) -> None:
        self._missed = True
        misses = self.misses + 1
        if misses >= self.script.max_misses:
            self.set(MISSES, 0)
            self._finish(self.script.outcomes[self.step.on_confused or self.script.on_confused])
            return
        self.set(MISSES, misses)
        replies = self.script.replies
        self._say(replies.silence if silent else replies.not_understood)
        use_hint = self.step.hint and self.phase == ASK and not silent
        self._say(self.step.hint if use_hint else self._question())
        self.state = self.step.state

    # -- slots

    @staticmethod
    def _read(read: Callable[[Utterance], Extraction | None], utterance: Utterance) -> Extraction | None:
        """What ``read`` finds in the correction inside the utterance, else in the whole of it."""
        if utterance.correction is not None:
            found = read(utterance.correction)
            if found is not None and not found.rejected:
                return found
        return read(utterance)

    def _held(self) -> str:
        held = self.get(PARTIAL)
        return held if isinstance(held, str) else ""

    def _extract(self, utterance: Utterance) -> bool:
        step = self.step
        extractor = step.extractor
        assert extractor is not None
        partial = self._held() if extractor.accumulates else ""
        found = self._read(lambda heard: extractor.extract(heard, partial), utterance)
        if found is None:
            return False
        if found.rejected:
            self._clear(PARTIAL)
            self._miss(silent=False)
        elif not found.value:
            self.set(PARTIAL, found.partial)
            self._say(step.partial, partial=found.partial)
            self.state = step.state
        else:
            self._store(step, found)
            if step.confirm:
                self._ask_to_confirm()
            else:
                self._accept()
        return True

    def _confirm(self, utterance: Utterance) -> bool:
        step = self.step
        extractor = step.extractor
        assert extractor is not None and self.script.yes is not None and self.script.no is not None
        found = self._read(lambda heard: extractor.extract(heard, ""), utterance)
        if found is not None and found.value:
            if found.value == self._value():
                self._accept()
            else:
                self._store(step, found)
                self._ask_to_confirm()
        elif found is not None and found.partial:  # a correction begun piece by piece
            self._reopen()
            self.set(PARTIAL, found.partial)
            self._say(step.partial, partial=found.partial)
        elif self.script.yes.matches(utterance):
            self._accept()
        elif self.script.no.matches(utterance):
            self._reopen()
            self._say(self.script.replies.retry)
            self._say(step.ask)
        else:
            return False
        return True

    def _ask_to_confirm(self) -> None:
        self.phase = CONFIRM
        self.set(PHASE, CONFIRM)
        self._say(self.step.confirm)
        self.state = self.step.state

    def _reopen(self) -> None:
        """The caller rejected the value being confirmed: forget it and ask again."""
        self.set(self.step.slot_for(self.n), "")
        self._clear(PARTIAL)
        self.phase = ASK
        self.set(PHASE, ASK)
        self.state = self.step.state

    def _store(self, step: Step, found: Extraction) -> None:
        """The value found for ``step`` (the current repeat), any further ones for the next repeats."""
        first = self.n if step is self.step else 1
        self.set(step.slot_for(first), found.value)
        if step.each:
            empty = (n for n in range(first + 1, len(step.labels) + 1) if not self.get(step.slot_for(n)))
            for n, value in zip(empty, found.more, strict=False):
                self.set(step.slot_for(n), value)
        for key, value in found.extra.items():
            self.set(key, value)
        if step is self.step:
            self._clear(PARTIAL)

    def _capture(self, step: Step, utterance: Utterance) -> None:
        """Fill another step's slot from this utterance, if it is there."""
        assert step.extractor is not None
        found = step.extractor.extract(utterance, "")
        if found is not None and found.value:
            self._store(step, found)

    def _listen(self, utterance: Utterance) -> None:
        """Fill the empty slots of the ``listen`` steps from what the caller said in passing."""
        for name in self.script.listen:
            step = self.script.steps[name]
            if step is self.step or step.extractor is None:
                continue
            slots = [step.slot_for(n) for n in range(1, len(step.labels) + 1)] if step.each else [step.slot]
            empty = [slot for slot in slots if not self.get(slot)]
            if not empty:
                continue
            found = self._read(step.extractor.spot, utterance)
            if found is None or not found.value:
                continue
            known = [self.get(slot) for slot in slots]
            values = [value for value in (found.value, *found.more) if value not in known]
            for slot, value in zip(empty, values, strict=False):
                self.set(slot, value)
            for key, value in found.extra.items():
                self.set(key, value)

    # -- speech

    def _question(self) -> str:
        return self.step.confirm if self.phase == CONFIRM else self.step.ask

    def _say(self, template: str, *, partial: str = "") -> None:
        if template:
            kind = self.step.extractor.reads_as if self.step.extractor is not None else "text"
            voice = self.script.voice
            fields = {
                "n": str(self.n),
                "label": self.step.label_for(self.n),
                "value": voice.read(kind, self._value()),
                "partial": voice.read(kind, partial),
            }
            self._said.append(template.format_map(fields))


def reply(script: Script, text: str, variables: Mapping[str, Any]) -> AgentReply:
    """The answer to one utterance, given the call's variables (the agent keeps no state)."""
    return Call(script, variables).handle(script.speech.hear(text[:MAX_UTTERANCE]))
