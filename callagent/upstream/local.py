"""The embedded accident-intake agent: callagent's default upstream, with no network and no model.

The call it runs is data. ``callagent/data/intake.toml`` (or any file given to ``LocalAgent``)
holds the steps of the call, what each one says, the intents it listens for (keyword lists), the
slot extractors it uses (by name: ``plate``, ``phone``, ``place``, ``vehicles``) and where each
answer leads. ``load_script`` reads it with tomllib and turns it into frozen objects, checking
every key and every reference on the way: a mistake raises ``ValueError`` naming the file and
the key, so a bad script stops start-up instead of a call.

The agent is stateless. Where a call stands (current step, confirm phase, vehicle being asked
about, misses in a row, phone digits heard so far, how it ended) lives in the session variables
under keys starting with ``_``; the collected slots (``hphm1``.., ``sjhm``, ``sgdd``, ``sgcl``,
``srsw``) sit beside them. Each turn reads the variables and yields the ones it changed, so a call
survives restarts and may move between processes that share the store.

One turn, in order: a call that has ended hears its ending again; the ``anywhere`` rules
(transfer, injury, "say that again") come next; then the current step: a pending confirmation,
the step's extractor, the step's ``when`` rules; nothing matched is a miss (silence counts too),
and too many misses in a row end the call.

Numbers: plates and phone numbers are spoken digit by digit (幺三八, 八九三九). cn2an reads such
a run as one integer, which loses leading zeros, so runs without unit characters are mapped digit
by digit with cn2an's own numeral table (零〇一壹幺二两...), extended by the script's
``digit_aliases`` (洞, 拐...). Runs with units (八千九百三十九, 十二) are read by cn2an's parser.

The reply is ``<state>CODE</state>`` followed by the text, cut into ``chunk_chars`` pieces (the
tag always whole in the first) with an optional pause between pieces to mimic a model's pacing.
"""

from __future__ import annotations

import asyncio
import re
import string
import tomllib
import unicodedata
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final, Protocol

import cn2an
from cn2an.conf import NUMBER_CN2AN, UNIT_CN2AN

from .base import UpstreamChunk, UpstreamTurn, VariablesUpdate

CONTINUE: Final = "1002"
STAY: Final = "stay"

# Internal call state, kept in the session variables.
STEP: Final = "_step"
PHASE: Final = "_phase"
MISSES: Final = "_misses"
VEHICLE: Final = "_vehicle"
OUTCOME: Final = "_outcome"
INTERNAL_KEYS: Final = frozenset({STEP, PHASE, MISSES, VEHICLE, OUTCOME})

ASK: Final = "ask"
CONFIRM: Final = "confirm"

TEMPLATE_FIELDS: Final = frozenset({"n", "label", "value", "partial"})
_MAX_SKIPS: Final = 32  # slots already filled that one turn may walk past
MAX_UTTERANCE: Final = 500  # characters heard per turn; a spoken sentence is far shorter


def default_script() -> Traversable:
    """The intake script shipped in the package."""
    return resources.files("callagent.data").joinpath("intake.toml")


# --------------------------------------------------------------------------------------------
# What the caller said


_NON_WORD = re.compile(r"[\W_]+")
_WHITESPACE = re.compile(r"\s+")


def fold(text: str) -> str:
    """Text as intents see it: NFKC (full-width to ASCII), lower case, no whitespace."""
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", text)).lower()


@dataclass(frozen=True, slots=True)
class Utterance:
    raw: str
    folded: str
    bare: str  # folded, punctuation removed: what ``exact`` answers are compared with

    @classmethod
    def of(cls, text: str) -> Utterance:
        folded = fold(text)
        return cls(text, folded, _NON_WORD.sub("", folded))

    @property
    def silent(self) -> bool:
        return not self.bare


def _alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any of the phrases, longest first."""
    unique = sorted(set(phrases), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, unique))) if unique else None


@dataclass(frozen=True, slots=True)
class Intent:
    """What the caller means, recognised by keywords or by whole short answers."""

    name: str
    keywords: tuple[str, ...]
    exact: frozenset[str]
    excepted: tuple[str, ...]
    _keywords: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _excepted: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keywords", _alternation(self.keywords))
        object.__setattr__(self, "_excepted", _alternation(self.excepted))

    def matches(self, utterance: Utterance) -> bool:
        if utterance.bare in self.exact:
            return True
        if self._keywords is None:
            return False
        text = utterance.folded
        if self._excepted is not None:
            text = self._excepted.sub("\x00", text)  # a blank that joins no neighbours
        return self._keywords.search(text) is not None


# --------------------------------------------------------------------------------------------
# Numbers


def _read_numeral(run: str) -> int | None:
    """A numeral with units (八千九百三十九) as an integer, or None if cn2an cannot read it."""
    try:
        return int(cn2an.cn2an(run, "normal"))
    except Exception:  # cn2an reports malformed numerals with ValueError, KeyError and others
        return None


class SpokenNumbers:
    """Rewrites spoken Chinese digits and numerals in a text as ASCII digits."""

    def __init__(self, digit_aliases: Mapping[str, str]) -> None:
        digits = {char: str(value) for char, value in NUMBER_CN2AN.items()} | dict(digit_aliases)
        self._digits = str.maketrans(digits)
        self._units = frozenset(UNIT_CN2AN)
        self._runs = re.compile("[" + re.escape("".join(digits) + "".join(UNIT_CN2AN)) + "]+")

    def to_ascii(self, text: str) -> str:
        return self._runs.sub(self._convert, text)

    def _convert(self, match: re.Match[str]) -> str:
        run = match.group()
        if not self._units.isdisjoint(run):
            value = _read_numeral(run)
            if value is not None:
                return str(value)
        return run.translate(self._digits)


# --------------------------------------------------------------------------------------------
# Extractors: an utterance in, a slot value out


@dataclass(frozen=True, slots=True)
class Extraction:
    """What an extractor made of an utterance.

    ``value`` is a complete slot value; ``partial`` is input kept until more arrives (phone
    digits); ``extra`` are further variables to set. Neither value nor partial means the input
    was recognised but unusable (eleven digits that are no mobile number): it counts as a miss
    and what was collected so far is dropped.
    """

    value: str = ""
    partial: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return not self.value and not self.partial


class Extractor(Protocol):
    accumulates: bool  # keeps a partial value between utterances

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        """The slot found in the utterance, or None when there is nothing of it."""
        ...


class PlateExtractor:
    """Chinese plate numbers in their spoken forms: 沪A8939, 沪 a 八九三九, 粤B·D12345."""

    accumulates = False
    _SEPARATORS = re.compile(r"[·•・.,，、\-_]")
    _SERIAL_FIXES = str.maketrans("OI", "01")  # plates use neither letter; recognisers do

    def __init__(
        self, numbers: SpokenNumbers, provinces: str, aliases: Mapping[str, str], serial_min: int, serial_max: int
    ) -> None:
        self._numbers = numbers
        self._provinces = {name: name for name in provinces} | dict(aliases)
        names = "|".join(re.escape(name) for name in sorted(self._provinces, key=len, reverse=True))
        self._pattern = re.compile(
            f"(?P<province>{names})(?P<city>[A-Z])(?P<serial>[A-Z0-9]{{{serial_min},{serial_max}}})(?P<suffix>[学警挂领港澳]?)"
        )

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        text = self._SEPARATORS.sub("", self._numbers.to_ascii(utterance.folded)).upper()
        for match in self._pattern.finditer(text):
            serial = match["serial"].translate(self._SERIAL_FIXES)
            if any(char.isdigit() for char in serial):
                province = self._provinces[match["province"]]
                return Extraction(f"{province}{match['city']}{serial}{match['suffix']}")
        return None


class PhoneExtractor:
    """A mobile number, possibly spread over several utterances (138 / 1234 / 5678)."""

    accumulates = True
    _GAPS = re.compile(r"(?<=[0-9])[,，、.。\-]+(?=[0-9])")
    _RUNS = re.compile(r"[0-9]+")

    def __init__(self, numbers: SpokenNumbers, length: int, prefixes: Sequence[str]) -> None:
        self._numbers = numbers
        self._length = length
        self._prefixes = tuple(prefixes)

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        digits = self._digits(utterance)
        if not digits:
            return None
        for candidate in (digits, partial + digits):  # the whole number said again wins
            if len(candidate) == self._length and self._plausible(candidate):
                return Extraction(candidate)
        if len(partial + digits) < self._length and self._plausible(partial + digits):
            return Extraction(partial=partial + digits)
        if len(digits) < self._length and self._plausible(digits):
            return Extraction(partial=digits)  # the caller started over
        return Extraction()

    def _digits(self, utterance: Utterance) -> str:
        spoken = self._numbers.to_ascii(utterance.bare)
        if spoken.isascii() and spoken.isdigit():
            return spoken  # nothing but digits: even a single one counts
        runs = self._RUNS.findall(self._GAPS.sub("", self._numbers.to_ascii(utterance.folded)))
        return "".join(run for run in runs if len(run) > 1)  # a lone 一 is a word (看一下), not a digit

    def _plausible(self, digits: str) -> bool:
        return any(digits[: len(prefix)] == prefix[: len(digits)] for prefix in self._prefixes)


class PlaceExtractor:
    """Where the accident happened: the caller's words, trimmed of fillers and lead-ins."""

    accumulates = False

    def __init__(
        self,
        fillers: Sequence[str],
        prefixes: Sequence[str],
        suffixes: Sequence[str],
        not_places: Sequence[Intent],
        weak_chars: str,
        min_chars: int,
        max_chars: int,
    ) -> None:
        self._leads = tuple(sorted({*fillers, *prefixes}, key=len, reverse=True))
        self._tails = tuple(sorted({*fillers, *suffixes}, key=len, reverse=True))
        phrases = [phrase for intent in not_places for phrase in (*intent.keywords, *intent.exact)]
        self._not_place = _alternation(phrases)
        self._weak_chars = frozenset(weak_chars)
        self._min_chars = min_chars
        self._max_chars = max_chars

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        spoken = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", utterance.raw))
        text = self._trim(spoken.replace("<", "").replace(">", ""))  # never a tag in a spoken value
        meaningful = _NON_WORD.sub("", fold(text))
        if self._not_place is not None:
            meaningful = self._not_place.sub("", meaningful)
        if sum(char not in self._weak_chars for char in meaningful) < self._min_chars:
            return None
        return Extraction(text[: self._max_chars])

    def _trim(self, text: str) -> str:
        while True:
            before = text
            text = _strip_non_word(text)
            text = next((text[len(lead) :] for lead in self._leads if text.startswith(lead)), text)
            text = next((text[: -len(tail)] for tail in self._tails if text.endswith(tail)), text)
            if text == before:
                return text


def _strip_non_word(text: str) -> str:
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


class VehiclesExtractor:
    """Single or several vehicles, and how many: 就我一辆 / 撞了护栏 / 两辆车 / 追尾."""

    accumulates = False
    _COUNT = re.compile(r"(?<!第)([0-9]{1,3})(?:辆|台|部)")

    def __init__(
        self,
        numbers: SpokenNumbers,
        single: Intent,
        multi: Intent,
        single_value: str,
        multi_value: str,
        count_variable: str,
        most: int,
    ) -> None:
        self._numbers = numbers
        self._single, self._multi = single, multi
        self._single_value, self._multi_value = single_value, multi_value
        self._count_variable = count_variable
        self._most = most

    def extract(self, utterance: Utterance, partial: str) -> Extraction | None:
        count = self._spoken_count(utterance)
        if count >= 2:
            return self._vehicles(self._multi_value, min(count, self._most))
        if self._multi.matches(utterance):
            return self._vehicles(self._multi_value, 2)
        if count == 1 or self._single.matches(utterance):
            return self._vehicles(self._single_value, 1)
        return None

    def _spoken_count(self, utterance: Utterance) -> int:
        match = self._COUNT.search(self._numbers.to_ascii(utterance.folded))
        return int(match.group(1)) if match else 0

    def _vehicles(self, kind: str, count: int) -> Extraction:
        return Extraction(kind, extra={self._count_variable: count})


# --------------------------------------------------------------------------------------------
# The script


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

    def matches(self, utterance: Utterance) -> bool:
        return self.intent is None or self.intent.matches(utterance)


@dataclass(frozen=True, slots=True)
class Branch:
    """One way out of a step: taken when the variables hold ``when``'s values."""

    go: str
    when: Mapping[str, str] = field(default_factory=dict)

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

    @property
    def partial_key(self) -> str:
        """Where the digits heard so far wait (``_sjhm_partial``)."""
        return f"_{self.slot}_partial"


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
_RESERVED_NAMES = frozenset({STAY})


class _Table:
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

    def table(self, key: str, *, required: bool = False) -> _Table:
        if key not in self.data and required:
            raise self.error(key, "is required")
        return _Table(self.data.get(key, {}), f"{self.where}.{key}" if self.where else key, self.source)

    def tables(self, key: str) -> list[_Table]:
        value = self.data.get(key, [])
        if isinstance(value, dict):
            return [self.table(key)]
        if not isinstance(value, list):
            raise self.error(key, "must be a table or an array of tables ([[...]])")
        return [_Table(item, f"{self.where}.{key}[{index}]", self.source) for index, item in enumerate(value)]

    def children(self) -> list[tuple[str, _Table]]:
        return [(name, self.table(name)) for name in self.data]

    def state(self, key: str, default: str | None = None) -> str:
        value = self.text(key, default)
        if not _STATE_CODE.fullmatch(value):
            raise self.error(key, f"{value!r} is not a four-digit stage code")
        return value


class _ScriptReader:
    """Builds a ``Script`` from parsed TOML, checking everything a call would stumble on."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.root = _Table(data, "", source)
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
        _ScriptChecker(script, root).check()
        return script

    def _intents(self, table: _Table) -> dict[str, Intent]:
        intents = {}
        for name, entry in table.children():
            entry.allow("keywords", "exact", "except")
            keywords = tuple(filter(None, map(fold, entry.texts("keywords"))))
            exact = frozenset(filter(None, (_NON_WORD.sub("", fold(item)) for item in entry.texts("exact"))))
            if not keywords and not exact:
                raise entry.error("keywords", "an intent needs keywords or exact answers")
            excepted = tuple(filter(None, map(fold, entry.texts("except"))))
            intents[name] = Intent(name, keywords, exact, excepted)
        return intents

    def intent(self, table: _Table, key: str) -> Intent:
        return self._intent_named(table, key, table.text(key))

    def _intent_named(self, table: _Table, key: str, name: str) -> Intent:
        if name not in self.intents:
            raise table.error(key, f"unknown intent {name!r} (known: {', '.join(sorted(self.intents))})")
        return self.intents[name]

    def _numbers(self, table: _Table) -> SpokenNumbers:
        table.allow("digit_aliases")
        aliases = table.table("digit_aliases")
        for char, digit in aliases.data.items():
            if len(char) != 1 or not isinstance(digit, str) or len(digit) != 1 or digit not in string.digits:
                raise aliases.error(char, 'a digit alias maps one character to one digit, e.g. "洞" = "0"')
        return SpokenNumbers(aliases.data)

    def _outcomes(self, table: _Table) -> dict[str, Outcome]:
        outcomes = {}
        for name, entry in table.children():
            entry.allow("state", "say")
            outcomes[name] = Outcome(name, entry.state("state"), entry.template("say"))
        return outcomes

    def _replies(self, table: _Table) -> Replies:
        table.allow("silence", "not_understood", "retry")
        return Replies(table.template("silence"), table.template("not_understood"), table.template("retry"))

    def _extractors(self, table: _Table) -> dict[str, Extractor]:
        builders: dict[str, Callable[[_Table], Extractor]] = {
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

    def _plate(self, table: _Table) -> Extractor:
        table.allow("provinces", "province_aliases", "serial_min", "serial_max")
        aliases = table.table("province_aliases")
        provinces = table.text("provinces")
        for name, code in aliases.data.items():
            if not isinstance(code, str) or code not in provinces or len(code) != 1:
                raise aliases.error(name, "must name one of the province codes in `provinces`")
        serial_min = table.integer("serial_min", 4, 1)
        serial_max = table.integer("serial_max", 6, serial_min)
        return PlateExtractor(self.numbers, provinces, aliases.data, serial_min, serial_max)

    def _phone(self, table: _Table) -> Extractor:
        table.allow("length", "prefixes")
        return PhoneExtractor(self.numbers, table.integer("length", 11, 1), table.texts("prefixes", required=True))

    def _place(self, table: _Table) -> Extractor:
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

    def _vehicles(self, table: _Table) -> Extractor:
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

    def _steps(self, table: _Table, extractors: Mapping[str, Extractor]) -> dict[str, Step]:
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

    def _next(self, step: _Table) -> tuple[Branch, ...]:
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

    def _rule(self, table: _Table, *, require_intent: bool = False) -> Rule:
        table.allow("intent", "go", "say", "set", "also")
        intent = self.intent(table, "intent") if "intent" in table.data or require_intent else None
        assignments = table.table("set")
        for key, value in assignments.data.items():
            if key in INTERNAL_KEYS:
                raise assignments.error(key, "is the agent's own call state and cannot be set by a rule")
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise assignments.error(key, "must be a string or an integer")
        return Rule(intent, table.text("go"), table.template("say", ""), dict(assignments.data), table.texts("also"))


class _ScriptChecker:
    """Cross-references: every name a script uses must exist and fit where it is used."""

    def __init__(self, script: Script, root: _Table) -> None:
        self.script = script
        self.root = root
        self.steps_table = root.table("steps")

    def check(self) -> None:
        script = self.script
        for name in (*script.steps, *script.outcomes):
            if name in _RESERVED_NAMES:
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

    def _outcome(self, table: _Table, key: str, name: str) -> None:
        if name not in self.script.outcomes:
            raise table.error(key, f"unknown outcome {name!r} (outcomes: {', '.join(self.script.outcomes)})")

    def _target(self, table: _Table, key: str, name: str, *, stay: bool = True) -> None:
        if name in self.script.steps or name in self.script.outcomes or (stay and name == STAY):
            return
        known = ", ".join([*self.script.steps, *self.script.outcomes, *([STAY] if stay else [])])
        raise table.error(key, f"unknown step or outcome {name!r} (known: {known})")

    def _rule(self, table: _Table, rule: Rule) -> None:
        self._target(table, "go", rule.go)
        for name in rule.also:
            step = self.script.steps.get(name)
            if step is None or step.extractor is None or "{n}" in step.slot or step.extractor.accumulates:
                raise table.error("also", f"{name!r} must name a step with an extractor and a single slot")

    def _step(self, table: _Table, step: Step) -> None:
        for index, rule in enumerate(step.rules):
            self._rule(table.tables("when")[index], rule)
        if step.on_confused:
            self._outcome(table, "on_confused", step.on_confused)
        if step.extractor is None:
            self._choice_step(table, step)
        else:
            self._slot_step(table, step)

    def _choice_step(self, table: _Table, step: Step) -> None:
        for key in ("slot", "each", "labels", "confirm", "partial", "ack", "next"):
            if key in table.data:
                raise table.error(key, "only a step with `extract` uses this")
        if not step.rules:
            raise table.error("when", "a step without `extract` needs `when` rules")

    def _slot_step(self, table: _Table, step: Step) -> None:
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


# --------------------------------------------------------------------------------------------
# One turn of a call


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


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


class _Call:
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
            self.n = min(max(_as_int(variables.get(VEHICLE), 1), 1), len(self.step.labels))
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
        return max(_as_int(self.get(MISSES), 0), 0)

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
        return min(max(_as_int(self.get(self.step.each), 1), 1), len(self.step.labels))

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


# --------------------------------------------------------------------------------------------
# The upstream


class LocalAgent:
    """The embedded intake agent, speaking the same tagged-text protocol as a workflow."""

    name = "local"
    history_turns = 0

    def __init__(
        self, script_path: Path | str | None = None, *, chunk_chars: int = 6, chunk_delay: float = 0.0
    ) -> None:
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be at least 1, not {chunk_chars}")
        if chunk_delay < 0:
            raise ValueError(f"chunk_delay must not be negative, not {chunk_delay}")
        self.script = load_script(script_path if script_path else default_script())
        self._chunk_chars = chunk_chars
        self._chunk_delay = chunk_delay

    def reply(self, text: str, variables: Mapping[str, Any]) -> AgentReply:
        """The answer to one utterance, given the call's variables (the agent keeps no state)."""
        return _Call(self.script, variables).handle(Utterance.of(text[:MAX_UTTERANCE]))

    async def stream(self, turn: UpstreamTurn) -> AsyncGenerator[UpstreamChunk, None]:
        reply = self.reply(turn.text, turn.variables)
        # The call moves on as soon as the reply starts, like a workflow that already ran:
        # a caller who barges in answers the question being asked, not the one before it.
        yield VariablesUpdate(reply.variables)
        for index, piece in enumerate(reply.pieces(self._chunk_chars)):
            if index and self._chunk_delay > 0:
                await asyncio.sleep(self._chunk_delay)
            yield piece

    async def delete_records(self, session_id: str, record_ids: list[str]) -> None:
        """No history is kept upstream: the call lives in the session variables."""

    async def delete_session(self, session_id: str) -> None:
        """No history is kept upstream: nothing to forget."""

    async def check_ready(self) -> None:
        """Always ready: no network, no model."""
