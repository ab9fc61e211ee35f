"""The dialogue state machine: one turn of one call, from where the call stands to the reply.

The agent is stateless. Where a call stands (current step, confirm phase, vehicle being asked
about, misses in a row, phone digits heard so far, how it ended) lives in the session variables
under keys starting with ``_``; the collected slots (``hphm1``.., ``sjhm``, ``sgdd``, ``sgcl``,
``srsw``) sit beside them. Each turn reads the variables and yields the ones it changed, so a call
survives restarts and may move between processes that share the store.

One turn, in order: a call that has ended hears its ending again; the ``anywhere`` rules
(transfer, injury, "say that again") come next; then the current step: a pending confirmation,
the step's extractor, the step's ``when`` rules; nothing matched is a miss (silence counts too),
and too many misses in a row end the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .extractors import Extraction
from .script import ASK, CONFIRM, CONTINUE, MISSES, OUTCOME, PHASE, STAY, STEP, VEHICLE, Outcome, Rule, Script, Step
from .understanding import MAX_UTTERANCE, Utterance

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
        self.changes: dict[str, Any] = {}
        self._said: list[str] = []
        self.state = CONTINUE
        self._missed = False
        name = variables.get(STEP)
        self.step = script.steps[name if isinstance(name, str) and name in script.steps else script.start]
        self.n = 1
        if self.step.each:
            self.n = min(max(as_int(variables.get(VEHICLE), 1), 1), len(self.step.labels))
        confirming = variables.get(PHASE) == CONFIRM and self.step.confirm and self._value()
        self.phase = CONFIRM if confirming else ASK

    # -- variables

    def get(self, key: str) -> Any:
        return self.changes[key] if key in self.changes else self._variables.get(key)

    def set(self, key: str, value: Any) -> None:
        if self.get(key) != value:
            self.changes[key] = value

    def _clear(self, key: str) -> None:
        if self.get(key):
            self.set(key, "")

    def _value(self) -> str:
        value = self.get(self.step.slot_for(self.n)) if self.step.slot else None
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
        if not rule.say:
            self._say(self._question())
        self.state = self.step.state

    def _go(self, target: str, skips: int = 0) -> None:
        if target in self.script.outcomes:
            self._finish(self.script.outcomes[target])
        else:
            self._enter(self.script.steps[target], 1, skips)

    def _enter(self, step: Step, n: int, skips: int = 0) -> None:
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

    def _extract(self, utterance: Utterance) -> bool:
        step = self.step
        assert step.extractor is not None
        partial = ""
        if step.extractor.accumulates:
            held = self.get(step.partial_key)
            partial = held if isinstance(held, str) and held.isascii() and held.isdigit() else ""
        found = step.extractor.extract(utterance, partial)
        if found is None:
            return False
        if found.rejected:
            if step.extractor.accumulates:
                self._clear(step.partial_key)
            self._miss(silent=False)
        elif not found.value:
            self.set(step.partial_key, found.partial)
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
        assert step.extractor is not None and self.script.yes is not None and self.script.no is not None
        found = step.extractor.extract(utterance, "")
        if found is not None and found.value:
            if found.value == self._value():
                self._accept()
            else:
                self._store(step, found)
                self._ask_to_confirm()
        elif found is not None and found.partial:  # a correction begun digit by digit
            self._reopen()
            self.set(step.partial_key, found.partial)
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
        if self.step.extractor is not None and self.step.extractor.accumulates:
            self._clear(self.step.partial_key)
        self.phase = ASK
        self.set(PHASE, ASK)
        self.state = self.step.state

    def _store(self, step: Step, found: Extraction) -> None:
        self.set(step.slot_for(self.n if step is self.step else 1), found.value)
        for key, value in found.extra.items():
            self.set(key, value)
        if step.extractor is not None and step.extractor.accumulates:
            self._clear(step.partial_key)

    def _capture(self, step: Step, utterance: Utterance) -> None:
        """Fill another step's slot from this utterance, if it is there."""
        assert step.extractor is not None
        found = step.extractor.extract(utterance, "")
        if found is not None and found.value:
            self._store(step, found)

    # -- speech

    def _question(self) -> str:
        return self.step.confirm if self.phase == CONFIRM else self.step.ask

    def _say(self, template: str, *, partial: str = "") -> None:
        if template:
            fields = {
                "n": str(self.n),
                "label": self.step.label_for(self.n),
                "value": self._value(),
                "partial": partial,
            }
            self._said.append(template.format_map(fields))


def reply(script: Script, text: str, variables: Mapping[str, Any]) -> AgentReply:
    """The answer to one utterance, given the call's variables (the agent keeps no state)."""
    return Call(script, variables).handle(Utterance.of(text[:MAX_UTTERANCE]))
