"""Clause segmentation for speech: whole clauses, early first audio, numbers and quotes kept whole."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callagent.markup import clean_markup
from callagent.segment import ClauseSegmenter, SegmentOptions

Output = tuple[str, str]  # (where it came from: feed | flush | finish, clause)


def spoken(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({p % (len(text) + 1) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(
    chunks: list[str], options: SegmentOptions | None = None, flush_after: frozenset[int] = frozenset()
) -> list[Output]:
    """Feed the chunks, firing the flush timer after the chunks numbered in ``flush_after``."""
    segmenter = ClauseSegmenter(options or SegmentOptions())
    out: list[Output] = []
    for k, chunk in enumerate(chunks):
        out += [("feed", clause) for clause in segmenter.feed(chunk)]
        if k in flush_after:
            flushed = segmenter.flush_pending()
            if flushed:
                out.append(("flush", flushed))
    rest = segmenter.finish()
    if rest:
        out.append(("finish", rest))
    assert not segmenter.has_pending
    return out


def clauses(chunks: list[str], options: SegmentOptions | None = None) -> list[str]:
    return [clause for _, clause in run(chunks, options)]


def boundaries(out: list[Output]) -> list[int]:
    """Positions in the cleaned text where one clause ends and the next begins."""
    ends, total = [], 0
    for _, clause in out[:-1]:
        total += len(clause)
        ends.append(total)
    return ends


def tokens(text: str) -> list[str]:
    """LLM-like pieces of one to three characters."""
    return re.findall(r".{1,3}", text, re.S)


# --- strategies -------------------------------------------------------------------------------

ATOMS = [
    *"好的请问您车辆在哪里发生事故对吗是我",
    *"aBcXyZ",
    *"0123456789",
    *"。！？；…!?;，、：,:. \n",
    *'“”「」"',
    "**",
    "__",
    "`",
    "~~",
    "#",
    "# ",
    "> ",
    "- ",
    "* ",
    "---",
    "[",
    "]",
    "(",
    ")",
    "](",
    "!",
    "http://x.cn",
    "😊",
    "👍🏻",
    "❤️",
    "1️⃣",
    "沪A8939",
    "粤B·12345",
    "京",
    "3.5",
    "10:30",
    "13812345678",
    "……",
    "。”",
]
any_text = st.lists(st.sampled_from(ATOMS), max_size=60).map("".join)
points = st.lists(st.integers(min_value=0, max_value=600), max_size=25)
flushes = st.frozensets(st.integers(min_value=0, max_value=25), max_size=10)
options = st.builds(
    SegmentOptions,
    min_chars=st.integers(min_value=0, max_value=6),
    max_chars=st.integers(min_value=6, max_value=40),
)

FILLER = "好的请问您车辆在哪里发生事故对吗是我abXY 。！？；…!?;，、：,\n"
filler = st.text(alphabet=FILLER, max_size=12)


# --- properties: any text, any chunking, any timer ------------------------------------------------


@given(any_text, points, flushes, options)
def test_clauses_add_up_to_the_cleaned_text(
    text: str, cuts: list[int], flush_after: frozenset[int], opts: SegmentOptions
) -> None:
    out = run(cut(text, cuts), opts, flush_after)
    assert "".join(clause for _, clause in out) == clean_markup(text)
    assert all(clause for _, clause in out)


@given(any_text, points, flushes, options)
def test_no_cut_inside_a_number(text: str, cuts: list[int], flush_after: frozenset[int], opts: SegmentOptions) -> None:
    clean = clean_markup(text)
    digit = set("0123456789")
    for b in boundaries(run(cut(text, cuts), opts, flush_after)):
        left, right = clean[max(0, b - 2) : b], clean[b : b + 2]
        assert not (left[-1:] in digit and right[:1] in digit), (clean, b)
        # 3.|5, 3|.5, 10:|30, 10|:30
        assert not (len(left) == 2 and left[0] in digit and left[1] in ".:," and right[:1] in digit), (clean, b)
        assert not (left[-1:] in digit and len(right) == 2 and right[0] in ".:," and right[1] in digit), (clean, b)


@given(any_text, points, flushes, options)
def test_clauses_cut_by_feed_have_min_chars(
    text: str, cuts: list[int], flush_after: frozenset[int], opts: SegmentOptions
) -> None:
    for source, clause in run(cut(text, cuts), opts, flush_after):
        if source == "feed":
            assert spoken(clause) >= opts.min_chars, clause


@given(any_text, points, options)
def test_without_the_timer_chunking_does_not_matter(text: str, cuts: list[int], opts: SegmentOptions) -> None:
    assert clauses(cut(text, cuts), opts) == clauses([text], opts)


# --- properties: protected spans --------------------------------------------------------------------

Spans = tuple[str, list[tuple[int, int]], SegmentOptions]  # text, protected spans, options


@st.composite
def text_with_spans(draw: st.DrawFn) -> Spans:
    """Filler around numbers, plates, phone numbers, times and short quotations; their spans."""
    opts = draw(options)
    number = st.one_of(
        st.sampled_from(["3.5", "10:30", "13812345678", "138 1234 5678", "2024-05-01", "1,000", "0.25"]),
        st.from_regex(r"1[3-9][0-9]{9}|[0-9]{1,6}([.:][0-9]{1,3})?", fullmatch=True),
    )
    plate = st.from_regex(r"[沪京粤苏浙][A-Z][ ·]?[A-Z0-9]{4,6}", fullmatch=True)
    quote_body = st.text(alphabet=FILLER + "0123456789", max_size=opts.max_chars - 2)
    marks = st.sampled_from(["“”", "「」", '""', "『』"])
    quotation = st.tuples(marks, quote_body).map(lambda q: q[0][0] + q[1] + q[0][1])
    text, spans = "", []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        text += draw(filler)
        span = draw(st.one_of(number, plate, quotation))
        spans.append((len(text), len(text) + len(span)))
        text += span
    text += draw(filler)
    return text, spans, opts


@given(text_with_spans(), points, flushes)
def test_no_cut_inside_protected_spans(case: Spans, cuts: list[int], flush_after: frozenset[int]) -> None:
    text, spans, opts = case
    assert clean_markup(text) == text
    out = run(cut(text, cuts), opts, flush_after)
    for b in boundaries(out):
        for start, end in spans:
            assert not start < b < end, (text[start:end], [c for _, c in out])


# --- properties: where clauses end --------------------------------------------------------------------

STOPS = {**dict.fromkeys("，、：,:", 1), **dict.fromkeys("。！？；…!?;.\n", 2)}
PLAIN = "好的请问您车辆在哪里发生事故对吗是我abXY ”）"
plain_text = st.text(alphabet=PLAIN + "".join(STOPS), max_size=120)


def stop_kind(text: str, i: int) -> int:
    if text[i] == "." and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
        return 0
    return STOPS.get(text[i], 0)


def reference_clauses(text: str, min_chars: int) -> list[str]:
    """Without numbers, plates, quotations or overflow: the rules of the issue, spelled out."""
    out, start, i, n = [], 0, 0, len(text)
    while i < n:
        kind = stop_kind(text, i)
        if not kind:
            i += 1
            continue
        j = i + 1
        while j < n and (stop_kind(text, j) or text[j] in "”）" or text[j].isspace()):
            kind = max(kind, stop_kind(text, j))
            j += 1
        first = not out
        if j < n and (first or kind == 2) and spoken(text[start:j]) >= min_chars:
            out.append(text[start:j])
            start = j
        i = j
    if start < n:
        out.append(text[start:])
    return out


@given(plain_text, points, st.integers(min_value=0, max_value=6))
def test_first_clause_at_earliest_boundary_later_ones_at_sentence_ends(
    text: str, cuts: list[int], min_chars: int
) -> None:
    opts = SegmentOptions(min_chars=min_chars, max_chars=1000)
    assert clauses(cut(text, cuts), opts) == reference_clauses(text, min_chars)


@given(plain_text, points, options)
def test_clauses_cut_by_feed_respect_max_chars(text: str, cuts: list[int], opts: SegmentOptions) -> None:
    for source, clause in run(cut(text, cuts), opts):
        if source == "feed":
            # longer only when the first max_chars characters hold too little to say
            assert len(clause) <= opts.max_chars or spoken(clause[: opts.max_chars]) < opts.min_chars, clause


# --- real replies ------------------------------------------------------------------------------------------

REPLIES = [
    (
        "好的，车牌沪A8939，对吗？请再说一下您的手机号，比如13812345678。事故发生在10:30吗？",
        ["好的，车牌沪A8939，", "对吗？请再说一下您的手机号，比如13812345678。", "事故发生在10:30吗？"],
    ),
    (
        "您好，我是交警队的事故信息采集助手。请问现场有人受伤吗？",
        ["您好，我是交警队的事故信息采集助手。", "请问现场有人受伤吗？"],
    ),
    (
        "我明白了……您别着急。车速大约是3.5公里每小时吗？",
        ["我明白了……", "您别着急。", "车速大约是3.5公里每小时吗？"],
    ),
    (
        "他说“我没看到红灯。”然后就开走了。您记下车牌了吗？",
        ["他说“我没看到红灯。”", "然后就开走了。", "您记下车牌了吗？"],
    ),
    (
        '他说"好的，我马上过去。"然后挂了电话。',
        ['他说"好的，我马上过去。"', "然后挂了电话。"],
    ),
    (
        "**好的**😊，请提供以下信息：\n1. 车牌号\n2. 手机号\n- 事故地点",
        ["好的，请提供以下信息：\n", "1. 车牌号\n", "2. 手机号\n", "事故地点"],
    ),
    (
        "收到！我已记录[事故地点](https://map.example.com/p?id=1)，![示意图](a.png)请稍等。",
        ["收到！我已记录事故地点，", "请稍等。"],
    ),
    (
        "Sure, your plate is 沪A·12345. Is that right?",
        ["Sure, ", "your plate is 沪A·12345. ", "Is that right?"],
    ),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
@pytest.mark.parametrize("chunking", ["whole", "tokens", "chars"])
def test_real_replies(reply: str, expected: list[str], chunking: str) -> None:
    chunks = {"whole": [reply], "tokens": tokens(reply), "chars": list(reply)}[chunking]
    assert clauses(chunks) == expected


def test_first_clause_leaves_with_the_first_character_after_its_comma() -> None:
    segmenter = ClauseSegmenter()
    assert segmenter.feed("我是事故") == []
    assert segmenter.feed("助手，") == []  # a closing quote or another stop could still follow
    assert segmenter.feed("请") == ["我是事故助手，"]
    assert segmenter.feed("问有人受伤吗，") == []  # later clauses wait for a sentence end


def test_a_short_clause_waits_for_the_next_sentence() -> None:
    assert clauses(tokens("好的，我记下了。嗯。请继续说一下事故经过。")) == [
        "好的，我记下了。",
        "嗯。请继续说一下事故经过。",
    ]


def test_a_long_clause_is_cut_at_a_soft_boundary() -> None:
    reply = "请您先把车辆移到路边，打开双闪，在车后五十米放置三角警示牌，然后拍下两车的位置和车牌，再拍一下受损部位。"
    out = clauses(tokens(reply), SegmentOptions(max_chars=30))
    assert "".join(out) == reply
    assert out[0] == "请您先把车辆移到路边，"
    assert all(len(clause) <= 30 for clause in out)
    assert out[1] == "打开双闪，在车后五十米放置三角警示牌，"


def test_a_long_number_is_never_cut() -> None:
    number = "6222021234567890123456789012345"
    out = clauses(["您的卡号是" + number + "，请核对。"], SegmentOptions(max_chars=10))
    assert any(number in clause for clause in out)


def test_a_stray_quote_mark_does_not_silence_the_reply() -> None:
    reply = "请注意“前方路口。" + "我们会尽快派人到现场处理。" * 6
    out = run(tokens(reply), SegmentOptions(max_chars=20))
    assert "".join(clause for _, clause in out) == reply
    assert len([source for source, _ in out if source == "feed"]) >= 4


# --- the flush timer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "flushed", "kept"),
    [
        ("好的，", "好的，", ""),  # a stop run waiting for its next character
        ("好的，我", "好的，我", ""),  # too short, no boundary: the timer sends it anyway
        ("您的手机号是138", "您的手机号是", "138"),  # the number may go on
        ("车速是3.", "车速是", "3."),  # a decimal point or a full stop?
        ("时间是10:", "时间是", "10:"),
        ("车牌是沪A89", "车牌是", "沪A89"),  # may become a plate
        ("他说“你好", "他说", "“你好"),  # inside an open quotation
        ("OK.", "OK.", ""),  # a full stop: only a Latin letter after it would change its meaning
        ("138", "", "138"),  # nothing safe: nothing sent
    ],
)
def test_flush_sends_up_to_the_latest_safe_position(pending: str, flushed: str, kept: str) -> None:
    segmenter = ClauseSegmenter()
    assert segmenter.feed(pending) == []
    assert segmenter.has_pending
    assert segmenter.flush_pending() == flushed
    assert segmenter.has_pending == bool(kept)
    assert segmenter.finish() == kept


def test_after_a_flush_only_sentence_ends_cut() -> None:
    segmenter = ClauseSegmenter()
    assert segmenter.feed("请稍等") == []
    assert segmenter.flush_pending() == "请稍等"
    assert segmenter.feed("，我查一下，马上回复您。好的") == ["，我查一下，马上回复您。"]
    assert segmenter.finish() == "好的"


def test_a_flushed_full_stop_does_not_disturb_what_follows() -> None:
    segmenter = ClauseSegmenter()
    assert segmenter.feed("OK.") == []
    assert segmenter.flush_pending() == "OK."
    assert segmenter.feed("。Is that right? Yes") == ["。Is that right? "]
    assert segmenter.finish() == "Yes"


def test_held_markup_is_pending_but_cannot_be_flushed() -> None:
    segmenter = ClauseSegmenter()
    assert segmenter.feed("好的**") == []
    assert segmenter.flush_pending() == "好的"
    assert segmenter.has_pending
    assert segmenter.flush_pending() == ""
    assert segmenter.feed("请问**您受伤了吗？") == []
    assert segmenter.finish() == "请问您受伤了吗？"


def test_finish_starts_a_new_reply() -> None:
    segmenter = ClauseSegmenter()
    segmenter.feed("好的，车牌沪A")
    assert segmenter.finish() == "好的，车牌沪A"
    assert segmenter.feed("我是事故助手，请") == ["我是事故助手，"]


# --- markup -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spoken_text"),
    [
        ("**粗体**和__强调__", "粗体和强调"),
        ("~~删除~~与`代码`", "删除与代码"),
        ("# 标题\n## 小标题\n#1号", "标题\n小标题\n#1号"),
        ("> 引用\n>> 更深", "引用\n更深"),
        ("- 项目\n* 项目\n+ 项目\n  - 缩进", "项目\n项目\n项目\n  缩进"),
        ("---\n正文", "\n正文"),
        ("看[这里](https://x.cn/a?b=1)和![图](a.png)", "看这里和"),
        ("[**粗**链](u)", "粗链"),
        ("[注意]请保持电话畅通", "[注意]请保持电话畅通"),
        ("3*4=12，snake_case，-5度，+86，10~20", "3*4=12，snake_case，-5度，+86，10~20"),
        ("好的😊👍🏻，❤️收到1️⃣", "好的，收到1"),
        ("好的!", "好的!"),
        ("1. 车牌号", "1. 车牌号"),
    ],
)
def test_clean_markup(text: str, spoken_text: str) -> None:
    assert clean_markup(text) == spoken_text
    assert "".join(clauses(list(text))) == spoken_text


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        SegmentOptions(min_chars=10, max_chars=5)
    with pytest.raises(ValueError):
        SegmentOptions(max_chars=0)
    with pytest.raises(ValueError):
        SegmentOptions(flush_delay=0)
