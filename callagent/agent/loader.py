"""Reading a call script: TOML in, a checked ``Script`` out, or a ``ValueError`` naming the place.

``load_script`` reads the file with tomllib and turns it into frozen objects, checking every key
on the way (``Table`` knows where in the file it is, for the message); ``checker`` then checks
every reference. A mistake stops start-up instead of a call.

The script brings the phone-speech vocabulary with it: ``[script] vocabulary`` names the file
(relative to the script), by default ``callagent/data/speech.toml`` (see ``understanding.Speech``).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .checker import ScriptChecker
from .extractors import ChoiceExtractor, Extractor, PhoneExtractor, PlaceExtractor, VehiclesExtractor
from .plates import PlateExtractor
from .script import CONTINUE, INTERNAL, Branch, Outcome, Replies, Rule, Script, Step
from .speaking import Voice
from .tables import Table, read_toml
from .understanding import NON_WORD, Intent, Speech, SpokenNumbers, fold


def load_script(source: Path | str | Traversable) -> Script:
    """Read and check a call script; ``ValueError`` says what is wrong and where."""
    if isinstance(source, str):
        source = Path(source)
    return _ScriptReader(read_toml(source, "call script"), source).read()


def default_vocabulary() -> Traversable:
    """The phone-speech vocabulary shipped in the package."""
    return resources.files("callagent.data").joinpath("speech.toml")


def load_speech(source: Path | Traversable) -> Speech:
    """Read the phone-speech vocabulary (``speech.toml``); ``ValueError`` names the key at fault."""
    table = Table(read_toml(source, "speech vocabulary"), "", str(source), "speech vocabulary")
    table.allow("rewrites", "fillers", "particles", "corrections")
    rewrites = table.table("rewrites")
    for heard, meant in rewrites.data.items():
        if not isinstance(meant, str) or not heard:
            raise rewrites.error(heard, "must map what the recogniser writes to what is meant, as strings")
    return Speech(
        {fold(heard): fold(meant) for heard, meant in rewrites.data.items()},
        fillers=tuple(filter(None, map(fold, table.texts("fillers")))),
        particles=tuple(filter(None, map(fold, table.texts("particles")))),
        corrections=tuple(filter(None, table.texts("corrections"))),
    )


class _ScriptReader:
    """Builds a ``Script`` from parsed TOML, checking everything a call would stumble on."""

    def __init__(self, data: dict[str, Any], source: Path | Traversable) -> None:
        self.source = source
        self.root = Table(data, "", str(source))
        self.intents: dict[str, Intent] = {}
        self.numbers = SpokenNumbers({})
        self.speech = Speech()

    def read(self) -> Script:
        root = self.root
        root.allow(
            "script", "replies", "numbers", "speech", "intents", "outcomes", "anywhere", "steps", "extractors"
        )  # fmt: skip
        settings = root.table("script", required=True)
        settings.allow("start", "max_misses", "on_confused", "listen", "vocabulary")
        self.speech = load_speech(self._vocabulary(settings))
        self.intents = self._intents(root.table("intents", required=True))
        self.numbers = self._numbers(root.table("numbers"))
        outcomes = self._outcomes(root.table("outcomes", required=True))
        extractors = self._extractors(root.table("extractors"))
        steps = self._steps(root.table("steps", required=True), extractors)
        anywhere = tuple(self._rule(table, require_intent=True) for table in root.tables("anywhere"))
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
            speech=self.speech,
            voice=self._voice(root.table("speech")),
            listen=settings.texts("listen"),
            intents=self.intents,
        )
        ScriptChecker(script, root).check()
        return script

    def _vocabulary(self, settings: Table) -> Path | Traversable:
        name = settings.text("vocabulary", "")
        if not name:
            return default_vocabulary()
        if isinstance(self.source, Path):
            return self.source.parent / name
        return resources.files("callagent.data").joinpath(name)

    def _voice(self, table: Table) -> Voice:
        table.allow("read_digits", "digits", "phone_groups", "group_separator", "plate_separator")
        default = Voice()
        digits = table.text("digits", default.digits)
        if len(digits) != 10:
            raise table.error("digits", "must be ten characters, the words for 0 to 9 in order")
        groups = table.data.get("phone_groups", list(default.phone_groups))
        if not isinstance(groups, list) or not all(isinstance(size, int) and size > 0 for size in groups):
            raise table.error("phone_groups", "must be a list of positive integers, e.g. [3, 4, 4]")
        read_digits = table.data.get("read_digits", True)
        if not isinstance(read_digits, bool):
            raise table.error("read_digits", "must be true or false")
        return Voice(
            digits=digits,
            phone_groups=tuple(groups),
            group_separator=table.text("group_separator", default.group_separator),
            plate_separator=table.text("plate_separator", default.plate_separator),
            read_digits=read_digits,
        )

    def _intents(self, table: Table) -> dict[str, Intent]:
        intents, includes = {}, {}
        for name, entry in table.children():
            entry.allow("keywords", "exact", "except", "groups", "include")
            keywords = tuple(filter(None, map(self._phrase, entry.texts("keywords"))))
            exact = frozenset(filter(None, (NON_WORD.sub("", self._phrase(item)) for item in entry.texts("exact"))))
            groups = self._groups(entry)
            includes[name] = (entry, entry.texts("include"))
            if not keywords and not exact and not groups and not includes[name][1]:
                raise entry.error("keywords", "an intent needs keywords, exact answers, groups or include")
            excepted = tuple(filter(None, map(self._phrase, entry.texts("except"))))
            intents[name] = Intent(name, keywords, exact, excepted, groups)
        for name, (entry, included) in includes.items():
            for other in included:
                if other not in intents or other == name:
                    raise entry.error("include", f"unknown intent {other!r} (known: {', '.join(sorted(intents))})")
                if includes[other][1]:
                    raise entry.error("include", f"{other!r} includes others itself: include its intents here")
                intents[name] = _merged(intents[name], intents[other])
        return intents

    def _phrase(self, text: str) -> str:
        """A vocabulary phrase as utterances are compared with it: folded, dialect rewritten."""
        return self.speech.rewrite(fold(text))

    def _groups(self, entry: Table) -> tuple[tuple[str, ...], ...]:
        value = entry.data.get("groups", [])
        if not isinstance(value, list) or not all(
            isinstance(group, list) and group and all(isinstance(word, str) and word for word in group)
            for group in value
        ):
            raise entry.error("groups", 'must be a list of word lists, e.g. [["为什么", "干嘛"], ["手机", "电话"]]')
        return tuple(tuple(map(self._phrase, group)) for group in value)

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
            "injuries": self._choice,
        }
        extractors = {}
        for name, entry in table.children():
            if name not in builders:
                raise table.error(name, f"unknown extractor (known: {', '.join(builders)})")
            extractors[name] = builders[name](entry)
        return extractors

    def _plate(self, table: Table) -> Extractor:
        table.allow("provinces", "province_aliases", "letter_words", "serial_min", "serial_max")
        aliases = table.table("province_aliases")
        provinces = table.text("provinces")
        for name, code in aliases.data.items():
            if not isinstance(code, str) or code not in provinces or len(code) != 1:
                raise aliases.error(name, "must name one of the province codes in `provinces`")
        letters = table.table("letter_words")
        for word, letter in letters.data.items():
            if not isinstance(letter, str) or len(letter) != 1 or letter not in string.ascii_uppercase:
                raise letters.error(word, 'must name one capital letter, e.g. "比" = "B"')
        serial_min = table.integer("serial_min", 4, 1)
        serial_max = table.integer("serial_max", 6, serial_min)
        return PlateExtractor(
            self.numbers, provinces, aliases.data, serial_min, serial_max, {fold(w): c for w, c in letters.data.items()}
        )

    def _choice(self, table: Table) -> Extractor:
        table.allow("answers", "stated")
        return ChoiceExtractor(self._choices(table, "answers"), self._choices(table, "stated"))

    def _choices(self, table: Table, key: str) -> list[tuple[Intent, str]]:
        """``value = "intent"`` pairs, in order: the value stored when the intent is heard."""
        choices = table.table(key, required=key == "answers")
        return [(self._intent_named(choices, value, choices.text(value)), value) for value in choices.data]

    def _phone(self, table: Table) -> Extractor:
        table.allow("length", "prefixes")
        return PhoneExtractor(self.numbers, table.integer("length", 11, 1), table.texts("prefixes", required=True))

    def _place(self, table: Table) -> Extractor:
        table.allow(
            "fillers", "prefixes", "suffixes", "not_places", "weak_chars", "min_chars", "max_chars",
            "markers", "landmarks",
        )  # fmt: skip
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
            markers=table.texts("markers"),
            landmarks=table.texts("landmarks"),
        )

    def _vehicles(self, table: Table) -> Extractor:
        table.allow(
            "single", "multi", "collision", "count_words", "single_value", "multi_value", "count_variable", "max"
        )  # fmt: skip
        counts = table.table("count_words")
        for word, count in counts.data.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise counts.error(word, 'must be a count, e.g. "俩" = 2')
        return VehiclesExtractor(
            self.numbers,
            single=self.intent(table, "single"),
            multi=self.intent(table, "multi"),
            single_value=table.text("single_value"),
            multi_value=table.text("multi_value"),
            count_variable=table.text("count_variable"),
            most=table.integer("max", 5, 2),
            collision=self.intent(table, "collision") if "collision" in table.data else None,
            count_words=dict(counts.data),
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
            table.allow("if", "say", "go")
            condition = table.table("if")
            for key, value in condition.data.items():
                if not isinstance(value, str):
                    raise condition.error(key, "must be a string")
            branches.append(Branch(table.text("go"), dict(condition.data), table.template("say", "")))
        return tuple(branches)

    def _rule(self, table: Table, *, require_intent: bool = False) -> Rule:
        table.allow("intent", "go", "say", "set", "also", "again")
        intent = self.intent(table, "intent") if "intent" in table.data or require_intent else None
        assignments = table.table("set")
        for key, value in assignments.data.items():
            if key.startswith(INTERNAL):
                raise assignments.error(key, "is the agent's own call state and cannot be set by a rule")
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise assignments.error(key, "must be a string or an integer")
        again = table.data.get("again", False)
        if not isinstance(again, bool):
            raise table.error("again", "must be true or false")
        say = table.template("say", "")
        return Rule(intent, table.text("go"), say, dict(assignments.data), table.texts("also"), again)


def _merged(intent: Intent, other: Intent) -> Intent:
    """``intent`` that also recognises everything ``other`` does (``include``)."""
    return Intent(
        intent.name,
        (*intent.keywords, *other.keywords),
        intent.exact | other.exact,
        (*intent.excepted, *other.excepted),
        (*intent.groups, *other.groups),
    )
