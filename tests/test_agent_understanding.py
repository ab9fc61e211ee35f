"""The local agent's understanding of phone speech and its spoken read-backs, as tables.

Each row is one rule of the understanding layer (callagent/agent/understanding.py and the
vocabulary files callagent/data/speech.toml and intake.toml) or of the spoken forms
(callagent/agent/speaking.py). Whole calls are in tests/calls/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from callagent.agent import Extraction, Utterance, default_script
from callagent.agent.speaking import Voice
from callagent.upstream.local import LocalAgent

SCRIPT_TEXT = default_script().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def agent() -> LocalAgent:
    return LocalAgent()


def hear(agent: LocalAgent, text: str) -> Utterance:
    return agent.script.speech.hear(text)


def means(agent: LocalAgent, intent: str, text: str) -> bool:
    return agent.script.intents[intent].matches(hear(agent, text))


def spot(agent: LocalAgent, step: str, text: str) -> Extraction | None:
    extractor = agent.script.steps[step].extractor
    assert extractor is not None
    return extractor.spot(hear(agent, text))


def extract(agent: LocalAgent, step: str, text: str, partial: str = "") -> Extraction | None:
    extractor = agent.script.steps[step].extractor
    assert extractor is not None
    return extractor.extract(hear(agent, text), partial)


def talk(agent: LocalAgent, *texts: str) -> tuple[list[str], list[str], dict[str, Any]]:
    variables: dict[str, Any] = {}
    codes, said = [], []
    for text in texts:
        reply = agent.reply(text, variables)
        variables.update(reply.variables)
        codes.append(reply.state)
        said.append(reply.text)
    return codes, said, variables


# -- the utterance: rewrites, core, corrections


@pytest.mark.parametrize(
    ("spoken", "folded"),
    [
        ("木有人受伤", "没有人受伤"),
        ("莫有", "没有"),
        ("冇人受伤", "没有人受伤"),
        ("人都没得事", "人都没有事"),
        ("沪A 8939", "沪a8939"),
    ],
)
def test_dialect_is_rewritten_before_anything_reads_it(agent: LocalAgent, spoken: str, folded: str) -> None:
    assert hear(agent, spoken).folded == folded


@pytest.mark.parametrize(
    ("spoken", "core"),
    [
        ("行嘞", "行"),
        ("得嘞", "得"),
        ("妥了", "妥"),
        ("是的呢", "是"),
        ("嗯嗯对", "对"),
        ("对头对头", "对头"),
        ("嗯，人工吧", "人工"),
        ("人工人工", "人工"),
        ("那个，可以的呀", "可以的"),
        ("嗯", "嗯"),  # a filler alone is kept: it is the whole answer
        ("", ""),
    ],
)
def test_the_core_of_a_short_answer(agent: LocalAgent, spoken: str, core: str) -> None:
    assert hear(agent, spoken).core == core


@pytest.mark.parametrize(
    ("spoken", "correction"),
    [
        ("沪A12345，不对，是沪A12346", ",是沪A12346"),  # NFKC: full-width commas are ASCII
        ("13812345678，说错了，13812345679", ",13812345679"),
        ("两辆车，不对不对，三辆", ",三辆"),
        ("不对", None),
        ("沪A12345", None),
    ],
)
def test_a_correction_inside_the_utterance(agent: LocalAgent, spoken: str, correction: str | None) -> None:
    found = hear(agent, spoken).correction
    assert (found.raw if found is not None else None) == correction


# -- intents


@pytest.mark.parametrize(
    "spoken",
    ["行嘞", "得嘞", "妥了", "没问题的", "中", "是的呢", "嗯嗯对", "对头对头", "好嘞", "嗯哪", "可不是嘛", "没毛病"],
)
def test_colloquial_yes(agent: LocalAgent, spoken: str) -> None:
    assert means(agent, "yes", spoken)
    assert means(agent, "ready", spoken), "a yes is also a go-ahead"


@pytest.mark.parametrize("spoken", ["不对", "不是的", "对不对", "不行嘞", "不中", "木对", "中山路"])
def test_not_a_yes(agent: LocalAgent, spoken: str) -> None:
    assert not means(agent, "yes", spoken)


@pytest.mark.parametrize("spoken", ["不对", "不是的", "不对不对", "搞错了", "不中", "木对", "不对头", "错咯"])
def test_colloquial_no(agent: LocalAgent, spoken: str) -> None:
    assert means(agent, "no", spoken)


@pytest.mark.parametrize(
    ("intent", "spoken", "meant"),
    [
        ("transfer", "人工", True),
        ("transfer", "人工人工", True),
        ("transfer", "嗯，人工吧", True),
        ("transfer", "在人工湖旁边", False),
        ("injury", "破了点皮", True),
        ("injury", "有点淤青", True),
        ("injury", "胳膊肿了", True),
        ("injury", "木有人受伤", False),
        ("injury", "莫有人受伤", False),
        ("injury", "没破皮", False),
        ("ask_who", "你是谁啊", True),
        ("ask_who", "你们是哪里打来的", True),
        ("ask_who", "这是诈骗电话吧", True),
        ("ask_why", "为什么要我手机号", True),
        ("ask_why", "要电话干嘛", True),
        ("ask_why", "手机号是13812345678", False),
        ("ask_how_long", "这个要多久", True),
        ("ask_how_long", "要多长时间", True),
        ("nobody", "没时间", False),
        ("not_ready", "没时间", True),
    ],
)
def test_intents(agent: LocalAgent, intent: str, spoken: str, meant: bool) -> None:
    assert means(agent, intent, spoken) is meant


# -- slots


@pytest.mark.parametrize(
    ("spoken", "plate"),
    [
        ("胡A12345", "沪A12345"),
        ("舒E12345", "苏E12345"),
        ("炉B12345", "鲁B12345"),
        ("湖南A12345", "湘A12345"),
        ("沪比12345", "沪B12345"),
        ("沪西幺二三四五", "沪C12345"),
        ("粤B迪12345", "粤BD12345"),
        ("京西迪八八六六八", "京CD88668"),
        ("嗯，那个，沪A，嗯，八九三九", "沪A8939"),  # fillers inside the plate
        # the extractor reads the utterance as it is; the dialogue gives it the correction first
        ("沪A12345，不对，是沪A12346", "沪A12345"),
    ],
)
def test_plates_as_a_recogniser_writes_them(agent: LocalAgent, spoken: str, plate: str) -> None:
    found = extract(agent, "plate", spoken)
    assert found is not None and found.value == plate


def test_both_plates_in_one_breath(agent: LocalAgent) -> None:
    assert extract(agent, "plate", "我的是沪B12345，对方是沪C67890") == Extraction("沪B12345", more=("沪C67890",))


@pytest.mark.parametrize(
    ("spoken", "held", "expected"),
    [
        ("沪A", "", Extraction(partial="沪A")),
        ("车牌是粤B", "", Extraction(partial="粤B")),
        ("沪A12", "", Extraction(partial="沪A12")),
        ("幺两三四五", "沪A", Extraction("沪A12345")),
        ("幺二", "粤B", Extraction(partial="粤B12")),
        ("三四五", "粤B12", Extraction("粤B12345")),
        ("迪12345", "粤B", Extraction("粤BD12345")),
        ("沪C67890", "沪A", Extraction("沪C67890")),  # a whole plate said again wins
        ("1234567890", "沪A", Extraction()),  # too long: dropped
        ("我看一下", "沪A", None),
        ("12345", "garbage", None),  # what was held is no plate's start
    ],
)
def test_a_plate_split_over_utterances(
    agent: LocalAgent, spoken: str, held: str, expected: Extraction | None
) -> None:
    assert extract(agent, "plate", spoken, held) == expected


@pytest.mark.parametrize(
    ("spoken", "held", "expected"),
    [
        ("幺三八，嗯，幺二三四，五六七八", "", Extraction("13812345678")),
        ("嗯，一", "138", Extraction(partial="1381")),
        ("那个，五六七八", "1381234", Extraction("13812345678")),
    ],
)
def test_phone_digits_among_fillers(agent: LocalAgent, spoken: str, held: str, expected: Extraction) -> None:
    assert extract(agent, "phone", spoken, held) == expected


@pytest.mark.parametrize(
    ("spoken", "kind", "count"),
    [
        ("三个车", "多车", 3),
        ("俩车刮了", "多车", 2),
        ("仨车", "多车", 3),
        ("跟前面那台碰了", "多车", 2),
        ("被后面的怼了", "多车", 2),
        ("我撞了", "多车", 2),  # a collision with nothing named: another vehicle
        ("撞到电线杆了", "单车", 1),
        ("两个", "多车", 2),
        ("就一个", "单车", 1),
        ("两个人", None, 0),
        ("我们俩都没事", None, 0),
    ],
)
def test_colloquial_vehicle_counts(agent: LocalAgent, spoken: str, kind: str | None, count: int) -> None:
    found = extract(agent, "vehicles", spoken)
    heard = (found.value, found.extra["_vehicles"]) if found is not None else (None, 0)
    assert heard == (kind, count)


@pytest.mark.parametrize(
    ("step", "spoken", "value"),
    [
        ("place", "我在中山路和人民路路口被追尾了", "中山路和人民路路口"),
        ("place", "现在在延安路高架上", "延安路高架"),
        ("place", "嗯，在徐家汇附近", "徐家汇附近"),
        ("place", "我在高速路上", None),  # no name before the landmark words: the question will be asked
        ("place", "我在开车", None),
        ("place", "中山路", None),  # no marker: not said in passing
        ("phone", "你记一下我电话13812345678", "13812345678"),
        ("phone", "幺三八一二三四五六七八", "13812345678"),
        ("phone", "沪A12345", None),
        ("phone", "138", None),  # pieces only when asked
        ("injury", "没人受伤", "否"),
        ("injury", "人都没事", "否"),
        ("injury", "没有", None),  # a bare 没有 means nothing unless asked
        ("vehicles", "我被追尾了", "多车"),
        ("vehicles", "车上就我们两个", None),  # a bare 两个 said in passing counts people
        ("plate", "车牌沪A12345", "沪A12345"),
        ("plate", "沪A", None),
    ],
)
def test_slots_said_in_passing(agent: LocalAgent, step: str, spoken: str, value: str | None) -> None:
    found = spot(agent, step, spoken)
    assert (found.value if found is not None else None) == value


@pytest.mark.parametrize(
    ("spoken", "value"),
    [("没有", "否"), ("木有", "否"), ("有", "是"), ("不清楚", "不确定"), ("有人受伤", "是"), ("在开车", None)],
)
def test_injury_answers(agent: LocalAgent, spoken: str, value: str | None) -> None:
    found = extract(agent, "injury", spoken)
    assert (found.value if found is not None else None) == value


# -- spoken forms


@pytest.mark.parametrize(
    ("kind", "value", "spoken"),
    [
        ("phone", "13812345678", "幺三八，幺二三四，五六七八"),
        ("phone", "15901234567", "幺五九，零幺二三，四五六七"),
        ("phone", "138", "幺三八"),
        ("phone", "1381", "幺三八，幺"),
        ("phone", "", ""),
        ("plate", "沪A8939", "沪 A 八 九 三 九"),
        ("plate", "粤BD12345", "粤 B D 幺 二 三 四 五"),
        ("plate", "沪A", "沪 A"),
        ("text", "中山路1号", "中山路1号"),
    ],
)
def test_spoken_forms(kind: str, value: str, spoken: str) -> None:
    assert Voice().read(kind, value) == spoken


@pytest.mark.parametrize(
    ("voice", "kind", "value", "spoken"),
    [
        (Voice(read_digits=False), "phone", "13812345678", "13812345678"),
        (Voice(digits="零一二三四五六七八九"), "phone", "13812345678", "一三八，一二三四，五六七八"),
        (Voice(phone_groups=(3, 3, 5), group_separator=" "), "phone", "13812345678", "幺三八 幺二三 四五六七八"),
        (Voice(phone_groups=(3,)), "phone", "13812345678", "幺三八，幺二三四五六七八"),
        (Voice(plate_separator=""), "plate", "沪A8939", "沪A八九三九"),
    ],
)
def test_spoken_forms_are_configurable(voice: Voice, kind: str, value: str, spoken: str) -> None:
    assert voice.read(kind, value) == spoken


def test_read_backs_are_spoken_while_the_variables_keep_the_canonical_value(agent: LocalAgent) -> None:
    _, said, variables = talk(agent, "喂", "方便", "没有", "单车", "沪A8939", "对", "13812345678")
    assert "沪 A 八 九 三 九，对吗" in said[4] and "8939" not in said[4]
    assert "幺三八，幺二三四，五六七八，对吗" in said[6]
    assert variables["hphm1"] == "沪A8939" and variables["sjhm"] == "13812345678"


def test_the_speech_table_configures_the_read_back(agent: LocalAgent, tmp_path: Path) -> None:
    path = tmp_path / "intake.toml"
    path.write_text(SCRIPT_TEXT.replace("read_digits = true", "read_digits = false"), encoding="utf-8")
    _, said, _ = talk(LocalAgent(path), "喂", "方便", "没有", "单车", "沪A8939")
    assert "沪A8939，对吗" in said[-1]


# -- bookkeeping


def test_all_bookkeeping_is_one_json_object_under_one_internal_key(agent: LocalAgent) -> None:
    _, _, variables = talk(agent, "喂", "方便", "没有", "追尾", "沪A", "幺二三四五")
    assert [key for key in variables if key.startswith("_")] == ["_agent"]
    state = variables["_agent"]
    assert state["step"] == "plate" and state["phase"] == "confirm" and state["vehicles"] == 2
    assert orjson.loads(orjson.dumps(state)) == state


def test_a_turn_returns_the_whole_agent_object_when_it_changes(agent: LocalAgent) -> None:
    first = agent.reply("喂", {})
    second = agent.reply("方便", first.variables)
    assert second.variables["_agent"] == {"step": "injury", "phase": "ask"}
    assert agent.reply("转人工", {"_agent": {"step": "place"}}).variables["_agent"]["outcome"] == "transfer"


# -- script checks of the new keys


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('digits = "零幺二三四五六七八九"', 'digits = "零幺二"', r"speech\.digits: must be ten characters"),
        ("phone_groups = [3, 4, 4]", 'phone_groups = ["3"]', r"speech\.phone_groups: must be a list"),
        ("read_digits = true", 'read_digits = "yes"', r"speech\.read_digits: must be true or false"),
        ('listen = ["injury",', 'listen = ["greeting",', r"script\.listen: 'greeting' must name a step with `extract`"),
        ('include = ["yes"]', 'include = ["yess"]', r"intents\.ready\.include: unknown intent 'yess'"),
        ('"比" = "B"', '"比" = "b"', r"letter_words\.比: must name one capital letter"),
        ('"俩" = 2', '"俩" = "2"', r"count_words\.俩: must be a count"),
        ('"否" = "no_injury"', '"否" = "no_injurie"', r"stated\.否: unknown intent 'no_injurie'"),
        ("again = true", 'again = "yes"', r"anywhere\[2\]\.again: must be true or false"),
        ('  ["为什么",', '  [1, "为什么",', r"intents\.ask_why\.groups: must be a list of word lists"),
        ("[[steps.injury.next]]   # 是, 不确定\ngo", '[[steps.injury.next]]\nif = { srsw = "是" }\ngo', "last branch"),
    ],
)
def test_a_bad_new_key_is_refused_with_a_clear_message(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in SCRIPT_TEXT, old
    path = tmp_path / "intake.toml"
    path.write_text(SCRIPT_TEXT.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        LocalAgent(path)


def test_a_script_may_bring_its_own_vocabulary(tmp_path: Path) -> None:
    (tmp_path / "speech.toml").write_text('fillers = ["嗯"]\n[rewrites]\n"得劲" = "可以"\n', encoding="utf-8")
    path = tmp_path / "intake.toml"
    path.write_text(SCRIPT_TEXT.replace("[script]\n", '[script]\nvocabulary = "speech.toml"\n', 1), encoding="utf-8")
    codes, said, _ = talk(LocalAgent(path), "喂", "得劲")
    assert codes == ["1002", "1002"] and "有人受伤吗" in said[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[rewrites]\n\"木有\" = 1\n", r"speech vocabulary .*: rewrites\.木有: must map"),
        ("fillers = \"嗯\"\n", r"speech vocabulary .*: fillers: must be a list of strings"),
        ("particle = []\n", r"speech vocabulary .*: particle: unknown key"),
        ("fillers = [\n", r"not valid TOML"),
    ],
)
def test_a_bad_vocabulary_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "speech.toml").write_text(text, encoding="utf-8")
    path = tmp_path / "intake.toml"
    path.write_text(SCRIPT_TEXT.replace("[script]\n", '[script]\nvocabulary = "speech.toml"\n', 1), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        LocalAgent(path)
