"""The incremental <state> extractor: any chunking gives the whole-text result."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from callagent.tags import StageTag, StateTagParser, _could_become_tag, strip_tags


def run(chunks: list[str]) -> tuple[list[str], list[str], list[str | StageTag]]:
    parser = StateTagParser()
    items: list[str | StageTag] = []
    for chunk in chunks:
        items.extend(parser.feed(chunk))
    rest = parser.finish()
    if rest:
        items.append(rest)
    texts = [i for i in items if not isinstance(i, StageTag)]
    codes = [str(i) for i in items if isinstance(i, StageTag)]
    return texts, codes, items


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({p % (len(text) + 1) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


piece = st.one_of(
    st.text(alphabet="您好，请问有人受伤吗？<>/state 0123abc", max_size=12),
    st.sampled_from(["<state>1002</state>", "<state>0003</state>", "<state> 2000 </state>", "<state></state>"]),
    st.sampled_from(["<state>", "</state>", "<sta", "<state>12", "<<state>1</state>", "<state>a>b</state>"]),
)


@given(st.lists(piece, max_size=8), st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_chunking_equals_whole_text(pieces: list[str], points: list[int]) -> None:
    text = "".join(pieces)
    expected_text, expected_codes = strip_tags(text)
    texts, codes, _ = run(cut(text, points))
    assert "".join(texts) == expected_text
    assert codes == expected_codes


@given(st.text(alphabet="您好<>/stae0129", max_size=40))
def test_only_a_possible_tag_prefix_is_held_back(text: str) -> None:
    parser = StateTagParser()
    emitted = "".join(i for i in parser.feed(text) if not isinstance(i, StageTag))
    held = parser.finish()
    assert emitted + held == strip_tags(text)[0]
    if held:
        assert text.endswith(held)
        assert _could_become_tag(held)


def test_tag_split_at_every_byte_gives_stage_before_text() -> None:
    text = "<state>1002</state>您好，请问有人受伤吗？"
    for i in range(1, len(text)):
        texts, codes, items = run([text[:i], text[i:]])
        assert codes == ["1002"]
        assert "".join(texts) == "您好，请问有人受伤吗？"
        assert isinstance(items[0], StageTag)


def test_text_before_a_tag_is_not_held_back() -> None:
    parser = StateTagParser()
    assert parser.feed("好的，") == ["好的，"]
    assert parser.feed("再见<sta") == ["再见"]
    assert parser.feed("te>0000</state>") == [StageTag("0000")]


def test_several_tags_each_reported_in_order() -> None:
    texts, codes, _ = run(["<state>1002</state>好的<state>3001</state>，再见<state>0000</state>"])
    assert codes == ["1002", "3001", "0000"]
    assert "".join(texts) == "好的，再见"


def test_unclosed_tag_at_end_is_spoken_as_written() -> None:
    texts, codes, _ = run(["请稍等<state>10"])
    assert codes == []
    assert "".join(texts) == "请稍等<state>10"


def test_not_a_tag_is_released_at_once() -> None:
    parser = StateTagParser()
    assert "".join(parser.feed("a<b")) == "a<b"
    assert "".join(parser.feed("<state>x>y")) == "<state>x>y"
