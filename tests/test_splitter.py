"""The streaming sentence splitter and its trio stage."""

from __future__ import annotations

import itertools
import re

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.messages import AgentText, Emotion, Sentence
from xiaozhi_trio.pipeline.stages.sentences import split_sentences
from xiaozhi_trio.pipeline.text.cleanup import clean_text, tidy_whitespace
from xiaozhi_trio.pipeline.text.emotions import emotion_for
from xiaozhi_trio.pipeline.text.splitter import SentenceSplitter

Item = Sentence | Emotion

# Pieces of replies: every kind of punctuation, abbreviation, number, URL and markup the
# splitter has a rule for, mixed with arbitrary characters.
REPLY_TOKENS = [
    "。",
    "！",
    "？",
    "；",
    "，",
    "、",
    "：",
    "…",
    "……",
    "...",
    ".",
    "!",
    "?",
    ",",
    ";",
    ":",
    "\n",
    " ",
    "  ",
    "”",
    '"',
    ")",
    "）",
    "3.14",
    "1.5万",
    "10:30",
    "1,000",
    "e.g.",
    "i.e.",
    "Mr.",
    "Dr.",
    "etc.",
    "U.S.",
    "J.",
    "1. ",
    "a.m.",
    "https://example.com/a.b?c=1",
    "www.x.cn",
    "a.b@c.com",
    "**",
    "# ",
    "- ",
    "`",
    "```",
    "[x](y)",
    "|",
    "😊",
    "❤️",
    " 😂 ",
    "‼️",
    "⁉",
    "Ⓜ️",
    "你好",
    "我是小智",
    "今天天气不错",
    "Hello",
    "world",
    "The",
    "cat",
    "and",
    "so",
    "Wow",
]


def reply_text() -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(REPLY_TOKENS), st.text(max_size=3))
    return st.lists(piece, max_size=60).map("".join)


def split(text: str, cuts: list[int] | None = None, **options: int) -> list[Item]:
    """Feed ``text`` cut at ``cuts`` (default: in one piece), then flush."""
    splitter = SentenceSplitter(**options)
    bounds = [0, *sorted(cuts or []), len(text)]
    items: list[Item] = []
    for a, b in itertools.pairwise(bounds):
        items += splitter.feed(text[a:b])
    return items + splitter.flush()


def sentences(text: str, **options: int) -> list[str]:
    return [item.text for item in split(text, **options) if isinstance(item, Sentence)]


def no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def walk(clean: str, texts: list[str]) -> str:
    """Find ``texts`` one after another in ``clean`` (whitespace ignored), checking that only
    unspeakable punctuation lies between them; return what is left after the last one."""
    rest = no_space(clean)
    for text in texts:
        found = rest.find(no_space(text))
        assert found >= 0, (text, rest)
        assert not speakable(rest[:found]), rest[:found]
        rest = rest[found + len(no_space(text)) :]
    return rest


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.data(), st.sampled_from([{}, {"first_clause_min_chars": 0, "max_chars": 12}]))
def test_any_chunking_gives_the_same_items(data: st.DataObject, options: dict[str, int]) -> None:
    text = data.draw(reply_text())
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=15))
    assert split(text, cuts, **options) == split(text, **options)


@settings(max_examples=200, deadline=None)
@given(reply_text())
def test_one_character_at_a_time_gives_the_same_items(text: str) -> None:
    assert split(text, list(range(len(text)))) == split(text)


@settings(max_examples=500, deadline=None)
@given(reply_text(), st.sampled_from([{}, {"first_clause_min_chars": 0, "max_chars": 12}]))
def test_nothing_is_lost_or_duplicated(text: str, options: dict[str, int]) -> None:
    """The invariant: with whitespace removed, the clean text is the emitted sentences in order,
    with nothing but unspeakable punctuation between or after them (dropped because it has
    nothing to say). Whitespace inside a sentence is the clean text's, collapsed."""
    clean = clean_text(text)
    emitted = sentences(text, **options)
    assert not speakable(walk(clean, emitted))
    for sentence in emitted:
        assert sentence in tidy_whitespace(clean)


@settings(max_examples=300, deadline=None)
@given(reply_text())
def test_every_sentence_is_clean_non_empty_and_speakable(text: str) -> None:
    for sentence in sentences(text, max_chars=20):
        assert sentence == tidy_whitespace(sentence)  # stripped, single spaces, no newline
        assert speakable(sentence)
        assert not set(sentence) & set("*`#\n")


@settings(max_examples=300, deadline=None)
@given(reply_text(), st.integers(10, 60))
def test_segments_respect_the_length_limit(text: str, max_chars: int) -> None:
    for sentence in sentences(text, max_chars=max_chars):
        # Only the run of punctuation that ends a segment may carry it past the limit.
        body = sentence.rstrip("。！？；｡!?.…，、：,;:\"'”’」』）)]】》〉 ")
        assert len(no_space(body)) <= max_chars


@settings(max_examples=300, deadline=None)
@given(reply_text())
def test_flush_emits_the_tail_and_leaves_nothing_behind(text: str) -> None:
    splitter = SentenceSplitter()
    fed = splitter.feed(text)
    tail = splitter.flush()
    held_back = [item.text for item in tail if isinstance(item, Sentence)]
    # Whatever speakable text feed() did not emit, flush() did.
    remaining = walk(clean_text(text), [item.text for item in fed if isinstance(item, Sentence)])
    assert speakable(remaining) == bool(held_back)
    assert splitter.flush() == []
    # The same splitter then treats a new reply like a fresh one.
    assert splitter.feed("😊 " + text) + splitter.flush() == split("😊 " + text)


@settings(max_examples=300, deadline=None)
@given(reply_text())
def test_at_most_one_emotion_and_only_first(text: str) -> None:
    items = split(text)
    emotions = [i for i, item in enumerate(items) if isinstance(item, Emotion)]
    assert emotions in ([], [0])
    assert bool(emotions) == (emotion_for(text.lstrip()[:1]) is not None)


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Chinese: the first clause "你好，" is too short to go alone.
        (
            "你好，我是小智。今天天气不错！要出去走走吗？",
            ["你好，我是小智。", "今天天气不错！", "要出去走走吗？"],
        ),
        (
            "Hello there! I'm Xiaozhi. How are you?",
            ["Hello there!", "I'm Xiaozhi.", "How are you?"],
        ),
        ("好的!我们走吧?Let's go. 出发。", ["好的!", "我们走吧?", "Let's go.", "出发。"]),
        ("OK.我们走。", ["OK.", "我们走。"]),
        ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),
        ('He said "Hi." Then he left.', ['He said "Hi."', "Then he left."]),
        # Numbers.
        ("Pi is 3.14. It never ends.", ["Pi is 3.14.", "It never ends."]),
        ("一共1.5万元。好贵！", ["一共1.5万元。", "好贵！"]),
        (
            "OK. We meet at 10:30, 1,000 people. Fine.",
            ["OK.", "We meet at 10:30, 1,000 people.", "Fine."],
        ),
        ("I have 3. Then 4.", ["I have 3.", "Then 4."]),
        # Abbreviations and initials.
        ("OK. Use e.g. salt, i.e. NaCl. Done.", ["OK.", "Use e.g. salt, i.e. NaCl.", "Done."]),
        (
            "Mr. Smith met Dr. Who and Mrs. Lee. They talked.",
            ["Mr. Smith met Dr. Who and Mrs. Lee.", "They talked."],
        ),
        (
            "Apples, pears, etc. and more. Then etc. Next.",
            ["Apples, pears, etc. and more.", "Then etc.", "Next."],
        ),
        (
            "In the U.S. government. In the U.S. The end.",
            ["In the U.S. government.", "In the U.S.", "The end."],
        ),
        ("J. K. Rowling wrote it. So do I. Yes.", ["J. K. Rowling wrote it.", "So do I.", "Yes."]),
        (
            "At 7 a.m. we left. At 8 p.m. We slept.",
            ["At 7 a.m. we left.", "At 8 p.m.", "We slept."],
        ),
        ("Mr.王来了。", ["Mr.王来了。"]),
        # Ellipses.
        ("Well... I think so. Hmm... maybe not.", ["Well...", "I think so.", "Hmm... maybe not."]),
        ("wait...what? OK.", ["wait...what?", "OK."]),
        ("嗯……让我想想。", ["嗯……", "让我想想。"]),
        # Emoji that are punctuation still end a sentence.
        ("Great news‼️ Are you ready⁉ Ⓜ️ Go.", ["Great news!", "Are you ready?", "Go."]),
        # URLs and e-mail.
        (
            "See https://example.com/a.b?c=1. Then mail a.b@c.com. Bye!",
            ["See example.com.", "Then mail a.b@c.com.", "Bye!"],
        ),
        ("访问 www.baidu.com/s?wd=1 吧！", ["访问 baidu.com 吧！"]),
        # Lists and markdown.
        (
            "Here are the steps\n1. First item\n2. Second item\n- Third",
            ["Here are the steps", "First item", "Second item", "Third"],
        ),
        ("## 天气\n**北京**：晴，25℃。\n> 注意防晒", ["天气", "北京：晴，25℃。", "注意防晒"]),
        (
            "Run this:\n```python\nprint('hi. there')\n```\nThat prints hi.",
            ["Run this:", "That prints hi."],
        ),
        ("| 城市 | 天气 |\n|---|---|\n| 北京 | 晴 |", ["城市 天气", "北京 晴"]),
        (
            "Read [the guide. It helps](https://x.io). Now.",
            ["Read the guide.", "It helps.", "Now."],
        ),
        # Punctuation with nothing to say joins what follows; at the end it is dropped.
        ("！！你好。", ["！！你好。"]),
        ("...\nHello. ...", ["... Hello."]),
        ("", []),
        ("  \n\n  ", []),
    ],
)
def test_examples(text: str, expected: list[str]) -> None:
    # (Clause cuts after the first segment are left out here: see test_clause_cuts_while_the_reply_is_short.)
    assert sentences(text, clause_cuts_chars=0) == expected


def test_first_clause_shortcut() -> None:
    # Long enough: 5 CJK characters, or 4 English words (6 units).
    assert sentences("好的呀朋友，我来帮你查一下，马上就好。", clause_cuts_chars=0) == [
        "好的呀朋友，",
        "我来帮你查一下，马上就好。",
    ]
    assert sentences("Sure thing my friend, let me check that, one moment.", clause_cuts_chars=0) == [
        "Sure thing my friend,",
        "let me check that, one moment.",
    ]
    # Too short: wait for the sentence end.
    assert sentences("你好，我是小智。") == ["你好，我是小智。"]
    assert sentences("Well, okay then.") == ["Well, okay then."]
    # Three English words are enough (4.5 units >= 4).
    assert sentences("Yes of course, here.") == ["Yes of course,", "here."]
    # With clause_cuts_chars=0 only the first segment gets the shortcut.
    assert sentences("你好呀朋友们，欢迎。今天天气很好，对吧？", clause_cuts_chars=0) == [
        "你好呀朋友们，",
        "欢迎。",
        "今天天气很好，对吧？",
    ]
    # It is configurable, down to any clause mark at all.
    assert sentences("你好，我是小智。", first_clause_min_chars=0) == ["你好，", "我是小智。"]
    assert sentences("好的呀朋友，我来。", first_clause_min_chars=10) == ["好的呀朋友，我来。"]


def test_clause_cuts_while_the_reply_is_short() -> None:
    # A short first clause plays for about a second: the next clause goes ahead alone too, until
    # the reply holds clause_cuts_chars (12: here 4 + 6 words, 15 units), then sentences only.
    assert sentences("Once upon a time, in a land far away, there lived a dragon, who could not fly.") == [
        "Once upon a time,",
        "in a land far away,",
        "there lived a dragon, who could not fly.",
    ]
    assert sentences("好的呀朋友，今天天气很好，最高气温二十五度，适合出门，记得防晒。") == [
        "好的呀朋友，",  # 5
        "今天天气很好，",  # 11 < 12
        "最高气温二十五度，",  # 19: no more clause cuts
        "适合出门，记得防晒。",
    ]
    # Each clause must still be long enough to stand alone.
    assert sentences("Sure thing my friend, well, let me check that, one moment.") == [
        "Sure thing my friend,",
        "well, let me check that,",
        "one moment.",
    ]
    # A larger budget keeps cutting; 0 leaves only the first segment's shortcut.
    assert sentences("好的呀朋友，今天天气很好，最高气温二十五度，适合出门，记得防晒。", clause_cuts_chars=30) == [
        "好的呀朋友，",
        "今天天气很好，",
        "最高气温二十五度，",
        "适合出门，",
        "记得防晒。",
    ]
    assert sentences("Once upon a time, in a land far away, there lived a dragon.", clause_cuts_chars=0) == [
        "Once upon a time,",
        "in a land far away, there lived a dragon.",
    ]
    with pytest.raises(ValueError, match="clause_cuts_chars"):
        SentenceSplitter(clause_cuts_chars=-1)


def test_clause_marks_need_a_space_in_english() -> None:
    assert sentences(
        "At 10:30,1,000 people came; all of them, sadly, left.", first_clause_min_chars=0, clause_cuts_chars=0
    ) == [
        "At 10:30,1,000 people came;",
        "all of them, sadly, left.",
    ]


def test_no_punctuation_is_still_spoken_at_flush() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("好的我知道了") == []
    assert splitter.feed(" ok then") == []
    assert splitter.flush() == [Sentence("好的我知道了 ok then")]


def test_long_text_without_sentence_ends_is_cut() -> None:
    words = " ".join(["word"] * 60)  # 299 characters, no punctuation
    parts = sentences(words, max_chars=50)
    assert " ".join(parts) == words
    assert all(40 <= len(p) <= 50 for p in parts[:-1]) and len(parts[-1]) <= 50
    # At a clause mark before the last space.
    text = "aaa bbb, ccc ddd eee fff ggg hhh iii jjj kkk lll mmm nnn ooo ppp qqq rrr."
    assert sentences(text, max_chars=30) == [
        "aaa bbb,",
        "ccc ddd eee fff ggg hhh iii",
        "jjj kkk lll mmm nnn ooo ppp",
        "qqq rrr.",
    ]
    # Chinese without any space or punctuation: cut right at the limit.
    chinese = "没有标点的中文回复" * 20
    parts = sentences(chinese, max_chars=40)
    assert "".join(parts) == chinese and [len(p) for p in parts] == [40, 40, 40, 40, 20]


def test_the_long_segment_is_cut_while_streaming() -> None:
    splitter = SentenceSplitter(max_chars=20)
    assert splitter.feed("一二三四五六七八九十" * 2) == []  # exactly at the limit: may still end
    assert splitter.feed("甲") == [Sentence("一二三四五六七八九十" * 2)]
    assert splitter.flush() == [Sentence("甲")]


def test_a_period_at_the_end_of_a_delta_waits_for_the_next() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("The value is 3.") == []
    assert splitter.feed("14 exactly. ") == []  # a space, but is the next word lowercase?
    assert splitter.feed("Next") == [Sentence("The value is 3.14 exactly.")]
    assert splitter.flush() == [Sentence("Next")]


def test_leading_emoji_becomes_the_emotion() -> None:
    assert split("  😊 你好！今天😂真开心。") == [
        Emotion("happy", "😊"),
        Sentence("你好！"),
        Sentence("今天真开心。"),
    ]
    assert split("🤔") == [Emotion("thinking", "🤔")]
    assert split("Hi 😊.") == [Sentence("Hi.")]  # only a leading emoji counts


def test_the_emotion_comes_before_any_sentence_even_split_across_deltas() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("😵") == []  # a joined emoji may follow
    assert splitter.feed("\u200d💫") == []
    assert splitter.feed("嗯。好") == [Emotion("confused", "😵\u200d💫"), Sentence("嗯。")]


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="first_clause_min_chars"):
        SentenceSplitter(first_clause_min_chars=-1)
    with pytest.raises(ValueError, match="max_chars"):
        SentenceSplitter(max_chars=3)


def test_reset_drops_an_interrupted_reply() -> None:
    splitter = SentenceSplitter()
    splitter.feed("😊 This sentence was interrupted")
    splitter.reset()
    assert splitter.feed("New reply. ") + splitter.flush() == [Sentence("New reply.")]


def abandoned(*deltas: str) -> list[Item]:
    splitter = SentenceSplitter()
    items = [item for delta in deltas for item in splitter.feed(delta)]
    return items + splitter.abandon()


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (("The weather is fine today. The we",), ["The weather is fine today."]),
        (("The weather is fine today.",), ["The weather is fine today."]),
        (("The we",), []),
        (("Well, the answer",), []),  # "Well," is too short to stand alone
        (("OK. It is sunny today, with a high of tw",), ["OK.", "It is sunny today,"]),
        (("OK. It is sunny today, with a high of twenty, ", "and lo"), ["OK.", "It is sunny today,", "with a high of twenty,"]),
        (("今天天气很好，最高气温",), ["今天天气很好，"]),
        (("好的。明天，",), ["好的。"]),
        (("It is 3.",), []),
        (("We meet at 10:",), []),
        (("Say hi to Mr.",), []),
        (("😊 Hello the",), []),
    ],
)
def test_abandon_keeps_only_what_was_complete(deltas: tuple[str, ...], expected: list[str]) -> None:
    assert [item.text for item in abandoned(*deltas) if isinstance(item, Sentence)] == expected


def test_abandon_keeps_the_emotion_and_leaves_the_splitter_ready() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("😊") == []  # a joined emoji may still follow
    assert splitter.abandon() == [Emotion("happy", "😊")]
    assert splitter.feed("Sorry, something went wrong. ") + splitter.flush() == [Sentence("Sorry, something went wrong.")]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_abandon_says_a_prefix_of_the_reply(data: st.DataObject) -> None:
    text = data.draw(reply_text())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    said = "".join(no_space(item.text) for item in abandoned(*pieces) if isinstance(item, Sentence))
    assert no_space(clean_text(text)).startswith(said)
    complete = [item for item in split(text) if isinstance(item, Sentence)]
    # Every sentence the whole reply would have had, except its last, is kept.
    assert len(said) >= len("".join(no_space(s.text) for s in complete[:-1]))


# --------------------------------------------------------------------------------------------
# The trio stage
# --------------------------------------------------------------------------------------------


async def test_stage_splits_deltas_and_flushes_when_the_reply_ends() -> None:
    text_send, text_receive = trio.open_memory_channel[AgentText](0)
    out_send, out_receive = trio.open_memory_channel[Sentence | Emotion](0)
    splitter = SentenceSplitter()
    splitter.feed("stale text from an interrupted reply")
    received: list[Sentence | Emotion] = []

    async def collect() -> None:
        with out_receive:
            async for item in out_receive:
                received.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(split_sentences, text_receive, out_send, splitter)
        nursery.start_soon(collect)
        with text_send:
            for delta in ["😊你好，", "我是小智。今", "天天气不错！要出", "去走走吗"]:
                await text_send.send(AgentText(delta))
    assert received == [
        Emotion("happy", "😊"),
        Sentence("你好，我是小智。"),
        Sentence("今天天气不错！"),
        Sentence("要出去走走吗"),
    ]
