"""Reading a call script: TOML in, a checked ``Script`` out, or a ``ValueError`` naming the place.

``load_script`` reads the file with tomllib and turns it into frozen objects, checking every key
on the way (``Table`` knows where in the file it is, for the message); ``checker`` then checks
every reference. A mistake stops start-up instead of a call.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Callable, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .checker import ScriptChecker
from .extractors import Extractor, PhoneExtractor, PlaceExtractor, PlateExtractor, VehiclesExtractor
from .script import CONTINUE, INTERNAL_KEYS, TEMPLATE_FIELDS, Branch, Outcome, Replies, Rule, Script, Step
from .understanding import NON_WORD, Intent, SpokenNumbers, fold


def load_script(source: Path | str | Traversable) -> Script:
    """Read and check a call script; ``ValueError`` says what is wrong and where."""
    if isinstance(source, str):
        source = Path(source)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the call script {source}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from exc
    return _ScriptReader(data, str(source)).read()


_STATE_CODE = re.compile(r"[0-9]{4}")


class Table:
    """A TOML table being read, knowing its place in the file for error messages."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        self.where = where
        self.source = source
        if not isinstance(data, dict):
            raise self.error("", "must be a table")
        self.data: dict[str, Any] = data

    def error(self, key: str, message: str) -> ValueError:
        place = f"{self.where}.{key}" if key and self.where else key or self.where or "top level"
        return ValueError(f"call script {self.source}: {place}: {message}")

    def allow(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                raise self.error(key, f"unknown key (allowed here: {', '.join(keys)})")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise self.error(key, "is required")
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return value

    def template(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise self.error(key, f"{exc} (write a literal brace as {{{{ or }}}})") from exc
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in TEMPLATE_FIELDS or spec or conversion:
                fields = ", ".join(f"{{{field}}}" for field in sorted(TEMPLATE_FIELDS))
                raise self.error(key, f"unknown placeholder {{{name}}} (known: {fields})")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "must be an integer")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return value

    def texts(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.error(key, "must be a list of strings")
        if required and not value:
            raise self.error(key, "must not be empty")
        return tuple(value)

    def table(self, key: str, *, required: bool = False) -> Table:
        if key not in self.data and required:
            raise self.error(key, "is required")
        return Table(self.data.get(key, {}), f"{self.where}.{key}" if self.where else key, self.source)

    def tables(self, key: str) -> list[Table]:
        value = self.data.get(key, [])
        if isinstance(value, dict):
            return [self.table(key)]
        if not isinstance(value, list):
            raise self.error(key, "must be a table or an array of tables ([[...]])")
        return [Table(item, f"{self.where}.{key}[{index}]", self.source) for index, item in enumerate(value)]

    def children(self) -> list[tuple[str, Table]]:
        return [(name, self.table(name)) for name in self.data]

    def state(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        if not _STATE_CODE.fullmatch(value):
            raise self.error(key, f"{value!r} is not a four-digit stage code")
        return value


class _ScriptReader:
    """Builds a ``Script`` from parsed TOML, checking everything a call would stumble on."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.root = Table(data, "", source)
        self.intents: dict[str, Intent] = {}
        self.numbers = SpokenNumbers({})

    def read(self) -> Script:
        root = self.root
        root.allow("script", "replies", "numbers", "intents", "outcomes", "anywhere", "steps", "extractors")
        self.intents = self._intents(root.table("intents", required=True))
        self.numbers = self._numbers(root.table("numbers"))
        outcomes = self._outcomes(root.table("outcomes", required=True))
        extractors = self._extractors(root.table("extractors"))
        steps = self._steps(root.table("steps", required=True), extractors)
        anywhere = tuple(self._rule(table, require_intent=True) for table in root.tables("anywhere"))
        settings = root.table("script", required=True)
        settings.allow("start", "max_misses", "on_confused")
        script = Script(
            source=root.source,
            start=settings.text("start"),
            max_misses=settings.integer("max_misses", 2, 1),
            on_confused=settings.text("on_confused"),
            replies=self._replies(root.table("replies", required=True)),
            anywhere=anywhere,
            steps=steps,
            outcomes=outcomes,
            yes=self.intents.get("yes"),
            no=self.intents.get("no"),
        )
        ScriptChecker(script, root).check()
        return script

    def _intents(self, table: Table) -> dict[str, Intent]:
        intents = {}
        for name, entry in table.children():
            entry.allow("keywords", "exact", "except")
            keywords = tuple(filter(None, map(fold, entry.texts("keywords"))))
            exact = frozenset(filter(None, (NON_WORD.sub("", fold(item)) for item in entry.texts("exact"))))
            if not keywords and not exact:
                raise entry.error("keywords", "an intent needs keywords or exact answers")
            excepted = tuple(filter(None, map(fold, entry.texts("except"))))
            intents[name] = Intent(name, keywords, exact, excepted)
        return intents

    def intent(self, table: Table, key: str) -> Intent:
        return self._intent_named(table, key, table.text(key))

    def _intent_named(self, table: Table, key: str, name: str) -> Intent:
        if name not in self.intents:
            raise table.error(key, f"unknown intent {name!r} (known: {', '.join(sorted(self.intents))})")
        return self.intents[name]

    def _numbers(self, table: Table) -> SpokenNumbers:
        table.allow("digit_aliases")
        aliases = table.table("digit_aliases")
        for char, digit in aliases.data.items():
            if len(char) != 1 or not isinstance(digit, str) or len(digit) != 1 or digit not in string.digits:
                raise aliases.error(char, 'a digit alias maps one character to one digit, e.g. "洞" = "0"')
        return SpokenNumbers(aliases.data)

    def _outcomes(self, table: Table) -> dict[str, Outcome]:
        outcomes = {}
        for name, entry in table.children():
            entry.allow("state", "say")
            outcomes[name] = Outcome(name, entry.state("state"), entry.template("say"))
        return outcomes

    def _replies(self, table: Table) -> Replies:
        table.allow("silence", "not_understood", "retry")
        return Replies(table.template("silence"), table.template("not_understood"), table.template("retry"))

    def _extractors(self, table: Table) -> dict[str, Extractor]:
        builders: dict[str, Callable[[Table], Extractor]] = {
            "plate": self._plate,
            "phone": self._phone,
            "place": self._place,
            "vehicles": self._vehicles,
        }
        extractors = {}
        for name, entry in table.children():
            if name not in builders:
                raise table.error(name, f"unknown extractor (known: {', '.join(builders)})")
            extractors[name] = builders[name](entry)
        return extractors

    def _plate(self, table: Table) -> Extractor:
        table.allow("provinces", "province_aliases", "serial_min", "serial_max")
        aliases = table.table("province_aliases")
        provinces = table.text("provinces")
        for name, code in aliases.data.items():
            if not isinstance(code, str) or code not in provinces or len(code) != 1:
                raise aliases.error(name, "must name one of the province codes in `provinces`")
        serial_min = table.integer("serial_min", 4, 1)
        serial_max = table.integer("serial_max", 6, serial_min)
        return PlateExtractor(self.numbers, provinces, aliases.data, serial_min, serial_max)

    def _phone(self, table: Table) -> Extractor:
        table.allow("length", "prefixes")
        return PhoneExtractor(self.numbers, table.integer("length", 11, 1), table.texts("prefixes", required=True))

    def _place(self, table: Table) -> Extractor:
        table.allow("fillers", "prefixes", "suffixes", "not_places", "weak_chars", "min_chars", "max_chars")
        not_places = [self._intent_named(table, "not_places", name) for name in table.texts("not_places")]
        min_chars = table.integer("min_chars", 2, 1)
        return PlaceExtractor(
            fillers=table.texts("fillers"),
            prefixes=table.texts("prefixes"),
            suffixes=table.texts("suffixes"),
            not_places=not_places,
            weak_chars=table.text("weak_chars", ""),
            min_chars=min_chars,
            max_chars=table.integer("max_chars", 60, min_chars),
        )

    def _vehicles(self, table: Table) -> Extractor:
        table.allow("single", "multi", "single_value", "multi_value", "count_variable", "max")
        return VehiclesExtractor(
            self.numbers,
            single=self.intent(table, "single"),
            multi=self.intent(table, "multi"),
            single_value=table.text("single_value"),
            multi_value=table.text("multi_value"),
            count_variable=table.text("count_variable"),
            most=table.integer("max", 5, 2),
        )

    def _steps(self, table: Table, extractors: Mapping[str, Extractor]) -> dict[str, Step]:
        steps = {}
        for name, entry in table.children():
            entry.allow(
                "ask", "state", "hint", "when", "on_confused",
                "extract", "slot", "each", "labels", "confirm", "partial", "ack", "next",
            )  # fmt: skip
            extractor = None
            if "extract" in entry.data:
                kind = entry.text("extract")
                if kind not in extractors:
                    raise entry.error("extract", f"no [extractors.{kind}] table configures this extractor")
                extractor = extractors[kind]
            steps[name] = Step(
                name=name,
                ask=entry.template("ask"),
                state=entry.state("state", CONTINUE),
                hint=entry.template("hint", ""),
                rules=tuple(self._rule(rule) for rule in entry.tables("when")),
                on_confused=entry.text("on_confused", ""),
                extractor=extractor,
                slot=entry.text("slot", ""),
                each=entry.text("each", ""),
                labels=entry.texts("labels"),
                confirm=entry.template("confirm", ""),
                partial=entry.template("partial", ""),
                ack=entry.template("ack", ""),
                next=self._next(entry),
            )
        return steps

    def _next(self, step: Table) -> tuple[Branch, ...]:
        if "next" not in step.data:
            return ()
        if isinstance(step.data["next"], str):
            return (Branch(step.text("next")),)
        branches = []
        for table in step.tables("next"):
            table.allow("if", "go")
            condition = table.table("if")
            for key, value in condition.data.items():
                if not isinstance(value, str):
                    raise condition.error(key, "must be a string")
            branches.append(Branch(table.text("go"), dict(condition.data)))
        return tuple(branches)

    def _rule(self, table: Table, *, require_intent: bool = False) -> Rule:
        table.allow("intent", "go", "say", "set", "also")
        intent = self.intent(table, "intent") if "intent" in table.data or require_intent else None
        assignments = table.table("set")
        for key, value in assignments.data.items():
            if key in INTERNAL_KEYS:
                raise assignments.error(key, "is the agent's own call state and cannot be set by a rule")
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise assignments.error(key, "must be a string or an integer")
        return Rule(intent, table.text("go"), table.template("say", ""), dict(assignments.data), table.texts("also"))
