"""The local intake agent: its extractors, its script checks, its streamed replies, the scripted calls."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callagent.agent import Extraction, SpokenNumbers, Utterance, default_script
from callagent.upstream.base import UpstreamTurn, VariablesUpdate
from callagent.upstream.local import LocalAgent

CALLS_DIR = Path(__file__).parent / "calls"
TAG = re.compile(r"<state>([0-9]{4})</state>")
SCRIPT_TEXT = default_script().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def agent() -> LocalAgent:
    return LocalAgent()


def extract(agent: LocalAgent, step: str, text: str, partial: str = "") -> Extraction | None:
    extractor = agent.script.steps[step].extractor
    assert extractor is not None
    return extractor.extract(Utterance.of(text), partial)


async def turn(agent: LocalAgent, text: str, variables: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """One streamed turn: the text pieces and the one variables update."""
    pieces: list[str] = []
    updates: list[VariablesUpdate] = []
    async for chunk in agent.stream(UpstreamTurn("s1", "t1", text, dict(variables))):
        if isinstance(chunk, VariablesUpdate):
            updates.append(chunk)
        else:
            assert isinstance(chunk, str)
            pieces.append(chunk)
    assert len(updates) == 1, "one VariablesUpdate per turn"
    return pieces, dict(updates[0])


def talk(agent: LocalAgent, *texts: str, variables: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Several turns of one call: the stage codes, and the variables at the end."""
    variables = dict(variables or {})
    codes = []
    for text in texts:
        reply = agent.reply(text, variables)
        variables.update(reply.variables)
        codes.append(reply.state)
    return codes, variables


def collected(variables: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in variables.items() if not key.startswith("_")}


AT_PLATE = ("喂", "方便", "没有", "单车")
AT_PHONE = (*AT_PLATE, "沪A8939", "对")


# -- numbers and extractors


@pytest.mark.parametrize(
    ("spoken", "digits"),
    [
        ("幺三八", "138"),
        ("一三八 一二三四", "138 1234"),
        ("零一二三", "0123"),  # leading zeros kept: digit runs are read digit by digit
        ("两两三三", "2233"),
        ("洞拐", "07"),
        ("八千九百三十九", "8939"),  # numerals with units go to cn2an
        ("两辆车", "2辆车"),
        ("十十", "十十"),  # not a numeral: left alone
    ],
)
def test_spoken_numbers(spoken: str, digits: str) -> None:
    assert SpokenNumbers({"洞": "0", "拐": "7"}).to_ascii(spoken) == digits


@pytest.mark.parametrize(
    ("spoken", "plate"),
    [
        ("沪A8939", "沪A8939"),
        ("沪 A 8 9 3 9", "沪A8939"),
        ("沪a八九三九", "沪A8939"),
        ("车牌是沪A8939", "沪A8939"),
        ("车牌号码是沪A，8939。", "沪A8939"),
        ("沪AD12345", "沪AD12345"),
        ("粤B·D12345", "粤BD12345"),
        ("苏A12345F", "苏A12345F"),
        ("粤B1234学", "粤B1234学"),
        ("京A幺零零八六", "京A10086"),
        ("沪A八千九百三十九", "沪A8939"),
        ("浙Ｂ１２３４５", "浙B12345"),
        ("户A8939", "沪A8939"),
        ("上海A12345", "沪A12345"),
        ("沪AO1234", "沪A01234"),
    ],
)
def test_plates_in_spoken_forms(agent: LocalAgent, spoken: str, plate: str) -> None:
    assert extract(agent, "plate", spoken) == Extraction(plate)


@pytest.mark.parametrize("spoken", ["A12345", "沪ABCDE", "今天天气不错", ""])
def test_no_plate(agent: LocalAgent, spoken: str) -> None:
    assert extract(agent, "plate", spoken) is None


@pytest.mark.parametrize(
    ("spoken", "held", "expected"),
    [
        ("13812345678", "", Extraction("13812345678")),
        ("幺三八一二三四五六七八", "", Extraction("13812345678")),
        ("一三八 一二三四 五六七八", "", Extraction("13812345678")),
        ("我的手机是幺八六，零零幺幺，二二三三", "", Extraction("18600112233")),
        ("138", "", Extraction(partial="138")),
        ("1234", "138", Extraction(partial="1381234")),
        ("5678", "1381234", Extraction("13812345678")),
        ("两两", "138", Extraction(partial="13822")),
        ("洞", "138", Extraction(partial="1380")),
        ("看一下，一三八", "", Extraction(partial="138")),
        ("一", "", Extraction(partial="1")),
        ("13812345678", "139", Extraction("13812345678")),  # the whole number said again wins
        ("13912", "1381234", Extraction(partial="13912")),  # too long together: started over
        ("567890", "1381234", Extraction()),  # too long, and no fresh start: dropped
        ("02164321234", "", Extraction()),  # not a mobile number
        ("5", "", Extraction()),
        ("我看一下", "", None),
        ("嗯", "138", None),
    ],
)
def test_phone_digits_over_utterances(agent: LocalAgent, spoken: str, held: str, expected: Extraction | None) -> None:
    assert extract(agent, "phone", spoken, held) == expected


@pytest.mark.parametrize(
    ("spoken", "kind", "count"),
    [
        ("单车", "单车", 1),
        ("就我一辆", "单车", 1),
        ("撞了护栏", "单车", 1),
        ("没有别的车，撞了护栏", "单车", 1),
        ("两辆车", "多车", 2),
        ("三辆车追尾", "多车", 3),
        ("十辆车", "多车", 5),  # capped by the script's max
        ("追尾", "多车", 2),
        ("和别人的车刮了", "多车", 2),
        ("一辆车撞了我", "多车", 2),
    ],
)
def test_vehicles(agent: LocalAgent, spoken: str, kind: str, count: int) -> None:
    assert extract(agent, "vehicles", spoken) == Extraction(kind, extra={"_vehicles": count})


def test_no_vehicles(agent: LocalAgent) -> None:
    assert extract(agent, "vehicles", "不知道") is None


@pytest.mark.parametrize(
    ("spoken", "place"),
    [
        ("中山路和人民路路口", "中山路和人民路路口"),
        ("就在中山路", "中山路"),
        ("嗯，在超市对面。", "超市对面"),
        ("事故发生在延安高架下面", "延安高架下面"),
        ("我家门口", "我家门口"),
    ],
)
def test_places(agent: LocalAgent, spoken: str, place: str) -> None:
    assert extract(agent, "place", spoken) == Extraction(place)


@pytest.mark.parametrize("spoken", ["好的", "对", "不知道", "我也不知道", "嗯嗯", "喂喂", "", "？"])
def test_no_place(agent: LocalAgent, spoken: str) -> None:
    assert extract(agent, "place", spoken) is None


def test_a_place_never_carries_a_tag(agent: LocalAgent) -> None:
    found = extract(agent, "place", "<state>0000</state>人民广场")
    assert found is not None and "<" not in found.value and ">" not in found.value


# -- the call


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("没人受伤", "1002"),
        ("人都没事", "1002"),
        ("没有人伤", "1002"),
        ("没受伤，就是车坏了", "1002"),
        ("都没事，不用叫救护车", "1002"),
        ("有人受伤", "0003"),
        ("有个人流血了", "0003"),
        ("对方好像骨折了", "0003"),
        ("我有点晕", "0003"),
        ("帮我叫救护车", "0003"),
        ("腿撞伤了", "0003"),
        ("有人伤", "0003"),
        ("有", "0003"),
    ],
)
def test_injuries_transfer_and_negations_go_on(agent: LocalAgent, answer: str, code: str) -> None:
    codes, _ = talk(agent, "喂", "方便", answer)
    assert codes == ["1002", "1002", code]


@pytest.mark.parametrize("request_", ["转人工", "人工客服", "我要找真人", "我要投诉"])
@pytest.mark.parametrize("step", ["greeting", "ready", "injury", "vehicles", "plate", "phone", "place", "photo_single"])
def test_a_person_can_be_asked_for_anywhere(agent: LocalAgent, step: str, request_: str) -> None:
    assert agent.reply(request_, {"_agent": {"step": step}}).state == "0001"


@pytest.mark.parametrize("answer", ["在开车", "现在不方便", "等会儿再说"])
def test_not_ready(agent: LocalAgent, answer: str) -> None:
    codes, _ = talk(agent, "喂", answer)
    assert codes == ["1002", "1001"]


def test_silence_reprompts_then_counts_as_not_understood(agent: LocalAgent) -> None:
    first = agent.reply("喂", {})
    second = agent.reply("", first.variables)
    assert second.state == "1002" and "方便通话吗" in second.text
    third = agent.reply("  ", {**first.variables, **second.variables})
    assert third.state == "0002"


def test_plate_is_read_back_and_a_correction_replaces_it(agent: LocalAgent) -> None:
    variables = talk(agent, *AT_PLATE)[1]
    read_back = agent.reply("沪A8939", variables)
    assert "沪 A 八 九 三 九，对吗" in read_back.text
    variables.update(read_back.variables)
    corrected = agent.reply("不对，是沪A8938", variables)
    assert "沪 A 八 九 三 八，对吗" in corrected.text
    variables.update(corrected.variables)
    assert variables["hphm1"] == "沪A8938"


def test_phone_number_collected_over_three_utterances(agent: LocalAgent) -> None:
    codes, variables = talk(agent, *AT_PHONE, "138", "1234", "5678")
    assert codes[-3:] == ["1002", "1002", "1002"]
    assert variables["sjhm"] == "13812345678" and variables["_agent"]["phase"] == "confirm"
    assert not variables["_agent"]["partial"]


def test_partial_digits_are_visible_while_collected(agent: LocalAgent) -> None:
    _, variables = talk(agent, *AT_PHONE, "幺三八")
    assert variables["_agent"]["partial"] == "138" and "sjhm" not in variables


def test_every_collected_variable_and_the_stage_codes_of_a_whole_call(agent: LocalAgent) -> None:
    codes, variables = talk(agent, *AT_PHONE, "13812345678", "对", "中山路", "再见")
    assert codes == ["1002"] * 8 + ["2000", "0000"]
    assert collected(variables) == {
        "srsw": "否",
        "sgcl": "单车",
        "hphm1": "沪A8939",
        "sjhm": "13812345678",
        "sgdd": "中山路",
    }


def test_internal_state_lives_in_one_underscore_variable(agent: LocalAgent) -> None:
    _, variables = talk(agent, "喂", "方便", "没有", "追尾")
    assert variables["_agent"]["step"] == "plate" and variables["_agent"]["vehicles"] == 2
    assert set(variables) == {"srsw", "sgcl", "_agent"}


def test_gateway_variables_are_kept_and_not_echoed(agent: LocalAgent) -> None:
    reply = agent.reply("喂", {"caller": "021-1234"})
    assert "caller" not in reply.variables


def test_only_changed_variables_are_returned(agent: LocalAgent) -> None:
    first = agent.reply("喂", {})
    second = agent.reply("方便", first.variables)
    assert second.variables == {"_agent": {**first.variables["_agent"], "step": "injury"}}


def test_the_agent_is_stateless(agent: LocalAgent) -> None:
    variables = talk(agent, *AT_PLATE)[1]
    assert agent.reply("沪A8939", variables) == agent.reply("沪A8939", variables)
    assert agent.reply("沪A8939", variables) == LocalAgent().reply("沪A8939", variables)


def test_garbage_call_state_restarts_safely(agent: LocalAgent) -> None:
    state = {"step": "nowhere", "phase": 7, "vehicle": "x", "misses": float("inf"), "partial": ["1"]}
    for garbage in (state, ["step"], "plate", None):
        reply = agent.reply("喂", {"_agent": garbage})
        assert reply.state == "1002" and reply.variables["_agent"]["step"] == "ready"


# -- streaming


async def test_reply_streams_in_pieces_with_the_tag_whole_in_the_first(agent: LocalAgent) -> None:
    pieces, updates = await turn(agent, "喂", {})
    assert len(pieces) > 2
    assert pieces[0].startswith("<state>1002</state>") and len(pieces[0]) == len("<state>1002</state>") + 6
    assert all(len(piece) <= 6 for piece in pieces[1:])
    whole = "".join(pieces)
    assert TAG.findall(whole) == ["1002"]
    assert TAG.sub("", whole) == "您好，这里是交通事故快处服务。请问您现在方便通话吗？"
    assert updates == {"_agent": {"step": "ready", "phase": "ask"}}


async def test_variables_update_comes_first_so_an_interrupted_turn_still_moves_the_call_on() -> None:
    agent = LocalAgent(chunk_chars=4)
    chunks = [chunk async for chunk in agent.stream(UpstreamTurn("s1", "t1", "喂", {}))]
    assert isinstance(chunks[0], VariablesUpdate)
    assert all(isinstance(chunk, str) for chunk in chunks[1:])


async def test_pacing_is_off_by_default_and_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr("asyncio.sleep", record)
    await turn(LocalAgent(), "喂", {})
    assert delays == []
    pieces, _ = await turn(LocalAgent(chunk_chars=10, chunk_delay=0.05), "喂", {})
    assert delays == [0.05] * (len(pieces) - 1)


async def test_the_upstream_keeps_no_history_and_is_always_ready(agent: LocalAgent) -> None:
    await agent.delete_records("s1", ["t1-q", "t1-a"])
    await agent.delete_session("s1")
    await agent.check_ready()
    assert agent.reply("方便", {"_agent": {"step": "ready"}}).state == "1002"


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"chunk_chars": 0}, "chunk_chars"), ({"chunk_delay": -1}, "chunk_delay")]
)
def test_bad_pacing_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalAgent(**kwargs)


def test_turns_are_fast(agent: LocalAgent) -> None:
    call = (*AT_PHONE, "138", "1234", "5678", "对", "中山路", "再见")
    started = time.perf_counter()
    for _ in range(100):
        talk(agent, *call)
    assert time.perf_counter() - started < 1.0, "1200 turns must take well under a second"


def test_a_huge_utterance_is_answered_quickly(agent: LocalAgent) -> None:
    started = time.perf_counter()
    reply = agent.reply("嗯" * 100_000, {"_agent": {"step": "place"}})
    assert reply.state == "1002" and time.perf_counter() - started < 0.5


# -- any input


answers = ["喂", "方便", "没有", "单车", "追尾", "对", "不对", "再见", "转人工", ""]
values = ["沪A8939", "138", "1234", "幺三八", "中山路"]
phrases = st.sampled_from([*answers, *values])
spoken = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="沪粤A幺一二两三八九十百千万零0123456789，。 <>/state{}·", max_size=20),
    phrases,
)
junk = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers(), max_size=2))
agent_state = st.fixed_dictionaries(
    {},
    optional={
        "step": st.one_of(st.sampled_from(["greeting", "plate", "phone", "place", "photo_multi"]), junk),
        "phase": st.one_of(st.sampled_from(["ask", "confirm"]), junk),
        "vehicle": junk,
        "vehicles": junk,
        "misses": junk,
        "partial": st.one_of(st.sampled_from(["138", "沪A", "沪A12"]), junk),
        "outcome": junk,
    },
)
call_state = st.fixed_dictionaries(
    {},
    optional={"_agent": st.one_of(agent_state, junk), "hphm1": junk, "hphm2": junk, "sjhm": junk, "sgdd": junk},
)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(spoken, min_size=1, max_size=6), variables=call_state)
def test_any_text_gets_one_reply_with_exactly_one_tag(
    agent: LocalAgent, texts: list[str], variables: dict[str, Any]
) -> None:
    for text in texts:
        reply = agent.reply(text, variables)
        whole = "".join(reply.pieces(6))
        assert whole == reply.tagged
        assert len(TAG.findall(whole)) == 1 and whole.count("<state>") == 1
        assert whole.startswith("<state>")
        variables = {**variables, **reply.variables}


# -- script checks


def script_with(tmp_path: Path, old: str, new: str) -> Path:
    assert old in SCRIPT_TEXT, old
    path = tmp_path / "intake.toml"
    path.write_text(SCRIPT_TEXT.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('start = "greeting"', 'start = "gretting"', r"script\.start: unknown step 'gretting'"),
        ('start = "greeting"', "start = greeting", r"not valid TOML"),
        ("max_misses = 2", "max_misses = 0", r"script\.max_misses: must be at least 1"),
        ('go = "injured"', 'go = "injurd"', r"anywhere\[1\]\.go: unknown step or outcome 'injurd'"),
        ('intent = "transfer"', 'intent = "transfr"', r"anywhere\[0\]\.intent: unknown intent 'transfr'"),
        ('state = "0003"', 'state = "3"', r"outcomes\.injured\.state: '3' is not a four-digit stage code"),
        ('ask = "请问现场有人受伤吗？"', 'ask = "{who}受伤吗？"', r"steps\.injury\.ask: unknown placeholder \{who\}"),
        ('ack = "好的，地点已记录。"', 'ack = "好的{"', r"steps\.place\.ack: .*literal brace"),
        ('extract = "phone"', 'extract = "fone"', r"steps\.phone\.extract: no \[extractors\.fone\]"),
        ('hint = "请告诉我', 'hnit = "请告诉我', r"steps\.vehicles\.hnit: unknown key"),
        ('partial = "{partial}，请您接着说。"\nconfirm = "您', 'confirm = "您', r"steps\.phone\.partial: "),
        ('"洞" = "0"', '"洞" = "零"', r"numbers\.digit_aliases\.洞: a digit alias"),
        ('set = { srsw = "是" }', 'set = { _step = "plate" }', r"set\._step: is the agent's own call state"),
        ('also = ["vehicles"]\ngo = "injury"', 'also = ["ready"]\ngo = "injury"', r"\.also: 'ready' must name a step"),
        (
            '[[steps.place.next]]\ngo = "photo_multi"',
            '[[steps.place.next]]\nif = { sgcl = "多车" }\ngo = "photo_multi"',
            r"steps\.place\.next: the last branch must have no `if`",
        ),
        ("[extractors.phone]", "[extractors.fax]", r"extractors\.fax: unknown extractor"),
    ],
)
def test_a_bad_script_is_refused_with_a_clear_message(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalAgent(script_path=script_with(tmp_path, old, new))


def test_a_missing_script_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the call script"):
        LocalAgent(tmp_path / "missing.toml")


def test_an_operator_changes_a_prompt_without_code(tmp_path: Path) -> None:
    agent = LocalAgent(str(script_with(tmp_path, "请问现场有人受伤吗？", "请问有没有人受伤？")))
    _, variables = talk(agent, "喂")
    assert agent.reply("方便", variables).text == "请问有没有人受伤？"


# -- the scripted calls of tests/calls, straight through the agent's stream


def load_calls() -> list[Any]:
    calls = []
    for path in sorted(CALLS_DIR.glob("*.toml")):
        for call in tomllib.loads(path.read_text(encoding="utf-8"))["call"]:
            calls.append(pytest.param(call, id=f"{path.stem}: {call['name']}"))
    return calls


CALLS = load_calls()


def test_the_corpus_is_big_enough() -> None:
    assert len(CALLS) >= 110


@pytest.mark.parametrize("call", CALLS)
async def test_scripted_call(agent: LocalAgent, call: dict[str, Any]) -> None:
    variables: dict[str, Any] = dict(call.get("preset", {}))
    for text, code, *phrases in call["turns"]:
        pieces, updates = await turn(agent, text, variables)
        variables.update(updates)
        whole = "".join(pieces)
        assert TAG.findall(whole) == [code], f"{text!r} -> {whole!r}"
        for phrase in phrases:
            assert phrase in whole, f"{text!r} -> {whole!r}"
    assert collected(variables) == call["expect"]
