"""Cross-checking a call script: every name it uses exists and fits where it is used."""

from __future__ import annotations

from typing import Final

from .script import STAY, Rule, Script, Step
from .tables import Table

RESERVED_NAMES: Final = frozenset({STAY})


class ScriptChecker:
    """Cross-references: every name a script uses must exist and fit where it is used."""

    def __init__(self, script: Script, root: Table) -> None:
        self.script = script
        self.root = root
        self.steps_table = root.table("steps")

    def check(self) -> None:
        script = self.script
        for name in (*script.steps, *script.outcomes):
            if name in RESERVED_NAMES:
                raise self.root.error(name, f"{name!r} is reserved for rules (go = {STAY!r}) and names no step")
        for name in set(script.steps) & set(script.outcomes):
            raise self.root.error("outcomes", f"{name!r} names both a step and an outcome")
        settings = self.root.table("script")
        if script.start not in script.steps:
            raise settings.error("start", f"unknown step {script.start!r}")
        self._outcome(settings, "on_confused", script.on_confused)
        for index, rule in enumerate(script.anywhere):
            self._rule(self.root.tables("anywhere")[index], rule)
        for step in script.steps.values():
            self._step(self.steps_table.table(step.name), step)
        for name in script.listen:
            listening = script.steps.get(name)
            if listening is None or listening.extractor is None:
                raise settings.error("listen", f"{name!r} must name a step with `extract`")

    def _outcome(self, table: Table, key: str, name: str) -> None:
        if name not in self.script.outcomes:
            raise table.error(key, f"unknown outcome {name!r} (outcomes: {', '.join(self.script.outcomes)})")

    def _target(self, table: Table, key: str, name: str, *, stay: bool = True) -> None:
        if name in self.script.steps or name in self.script.outcomes or (stay and name == STAY):
            return
        known = ", ".join([*self.script.steps, *self.script.outcomes, *([STAY] if stay else [])])
        raise table.error(key, f"unknown step or outcome {name!r} (known: {known})")

    def _rule(self, table: Table, rule: Rule) -> None:
        self._target(table, "go", rule.go)
        for name in rule.also:
            step = self.script.steps.get(name)
            if step is None or step.extractor is None or "{n}" in step.slot or step.extractor.accumulates:
                raise table.error("also", f"{name!r} must name a step with an extractor and a single slot")

    def _step(self, table: Table, step: Step) -> None:
        for index, rule in enumerate(step.rules):
            self._rule(table.tables("when")[index], rule)
        if step.on_confused:
            self._outcome(table, "on_confused", step.on_confused)
        if step.extractor is None:
            self._choice_step(table, step)
        else:
            self._slot_step(table, step)

    def _choice_step(self, table: Table, step: Step) -> None:
        for key in ("slot", "each", "labels", "confirm", "partial", "ack", "next"):
            if key in table.data:
                raise table.error(key, "only a step with `extract` uses this")
        if not step.rules:
            raise table.error("when", "a step without `extract` needs `when` rules")

    def _slot_step(self, table: Table, step: Step) -> None:
        assert step.extractor is not None
        if not step.slot or not step.slot.replace("{n}", "").isidentifier():
            raise table.error("slot", "a step with `extract` needs `slot`, a variable name (may contain {n})")
        if ("{n}" in step.slot) != bool(step.each):
            raise table.error("each", "`each` (the variable counting repeats) and {n} in `slot` go together")
        if step.each and not step.labels:
            raise table.error("labels", "a repeated step needs one label per repeat")
        if step.extractor.accumulates and not step.partial:
            raise table.error("partial", "this extractor collects input over several turns: say what was heard")
        if step.confirm and (self.script.yes is None or self.script.no is None):
            raise table.error("confirm", "confirmations need the intents `yes` and `no`")
        if not step.next:
            raise table.error("next", "a step with `extract` needs `next`")
        for index, branch in enumerate(step.next):
            self._target(table, "next" if len(step.next) == 1 else f"next[{index}].go", branch.go, stay=False)
        if step.next[-1].when:
            raise table.error("next", "the last branch must have no `if`, so that the call always goes on")
