"""Markdown, URL and emoji cleanup before TTS."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.messages import Emotion
from xiaozhi_trio.pipeline.text.cleanup import (
    MarkdownCleaner,
    clean_text,
    tidy_whitespace,
)
from xiaozhi_trio.pipeline.text.emotions import (
    EMOJI_EMOTIONS,
    EMOTIONS,
    LeadingEmotion,
    emotion_for,
    emotion_named,
)

# Pieces that exercise every rule, mixed with arbitrary characters by the strategies below.
MARKDOWN_TOKENS = [
    "**",
    "*",
    "__",
    "_",
    "`",
    "```",
    "```python",
    "~~~",
    "#",
    "## ",
    "> ",
    "- ",
    "* ",
    "+ ",
    "1. ",
    "12) ",
    "---",
    "***",
    "|",
    "| a | b |",
    "|---|:-:|",
    "[",
    "]",
    "(",
    ")",
    "[link](",
    "https://",
    "http://x.y/z?a=1",
    "www.",
    "example.com",
    "a@b.co",
    "h",
    "ht",
    "w",
    "ww",
    "\n",
    " ",
    "\t",
    "\r\n",
    "😊",
    "❤️",
    "👍🏽",
    "→",
    "•",
    "‼️",
    "⁉",
    "Ⓜ️",
    "3.14",
    "10:30",
    "你好",
    "。",
    "，",
    "Hello",
    "world",
    ".",
    ",",
    "!",
    "?",
    "\\",
    "~",
    "℃",
    "°",
]


def markdown_text() -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(MARKDOWN_TOKENS), st.text(max_size=3))
    return st.lists(piece, max_size=40).map("".join)


def feed_in_pieces(text: str, cuts: list[int]) -> str:
    cleaner = MarkdownCleaner()
    bounds = [0, *sorted(cuts), len(text)]
    out = "".join(cleaner.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    return out + cleaner.flush()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_clean_text(data: st.DataObject) -> None:
    text = data.draw(markdown_text())
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    assert feed_in_pieces(text, cuts) == feed_in_pieces(text, [])


@settings(max_examples=300, deadline=None)
@given(markdown_text())
def test_one_character_at_a_time_gives_the_same_clean_text(text: str) -> None:
    assert feed_in_pieces(text, list(range(len(text)))) == feed_in_pieces(text, [])


@given(markdown_text())
def test_clean_text_has_no_markup_or_emoji_left(text: str) -> None:
    clean = clean_text(text)
    assert not set(clean) & set("*_`#\\\r😊❤👍→•\ufe0f‼⁉Ⓜ")
    for line in clean.split("\n") if clean else []:
        assert line and line == tidy_whitespace(line)


URL_TOKENS = [
    "https://a.b/c?d=1",
    "HTTP://X.Y",
    "www.x.cn",
    "see",
    "h",
    "ht",
    "w",
    "ww",
    ":",
    "/",
    " ",
    "\n",
    "。",
    ".",
    "?",
    "(",
    ")",
    "[",
    "](",
    "我",
]


@given(st.lists(st.sampled_from(URL_TOKENS), max_size=30).map("".join))
def test_urls_are_always_shortened(text: str) -> None:
    url = re.compile(r"(?<![A-Za-z0-9@./-])(?:https?://|www\.)", re.IGNORECASE)
    assert not url.search(clean_text(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Bold**, *em*, __strong__ and `code`", "Bold, em, strong and code"),
        ("# Title\n## Sub", "Title\nSub"),
        ("> quoted\n> > nested", "quoted\nnested"),
        ("- one\n* two\n+ three\n  - nested", "one\ntwo\nthree\nnested"),
        ("1. first\n2) second\n10. tenth", "first\nsecond\ntenth"),
        ("3.14 is pi\n-5 degrees\n+86 phone\n2024年", "3.14 is pi\n-5 degrees\n+86 phone\n2024年"),
        ("See [the docs](https://example.com/a.b) now.", "See the docs now."),
        ("[**bold link**](x)", "bold link"),
        ("Go to https://www.python.org/downloads/?x=1. Then", "Go to python.org. Then"),
        ("Or www.baidu.com/s?q=1, ok", "Or baidu.com, ok"),
        ("访问https://x.com。", "访问x.com。"),
        ("(see https://a.io/b)", "(see a.io)"),
        ("mail a.b@c.com.", "mail a.b@c.com."),
        ("Code:\n```python\nprint('hi')\n# comment\n```\nafter", "Code:\nafter"),
        ("~~~\nx = 1\n~~~~\nafter", "after"),
        ("```\nnever closed\nstill code", ""),
        ("| a | b |\n|---|:--:|\n| 1 | 2 |", "a b\n1 2"),
        ("---\ntext\n***\n___", "text"),
        ("你好😊！今天☀️天气不错👍🏽。", "你好！今天天气不错。"),
        ("1️⃣ 第一 → 第二 • 第三", "1 第一 第二 第三"),
        ("Wow‼️ Really⁉ Ⓜ️etro Ⓜ", "Wow! Really? etro"),
        ("太好了‼今天⁉️", "太好了!今天?"),
        ("25℃, 30°", "25℃, 30°"),
        ("[1] note [a](b c)", "[1] note [a](b c)"),
        ("C# and #tag and snake_case", "C and tag and snakecase"),
        ("line\r\nbreaks\r\n", "line\nbreaks"),
    ],
)
def test_examples(text: str, expected: str) -> None:
    assert clean_text(text) == expected


@pytest.mark.parametrize("text", ["+  x", "-  x", "1.  x", ">  x"])
def test_spaces_after_a_marker_do_not_depend_on_chunking(text: str) -> None:
    outputs = {feed_in_pieces(text, [cut]) for cut in range(len(text) + 1)}
    assert len(outputs) == 1 and outputs.pop().strip() == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("````\ncode\n```\nstill code\n````\nafter", "after"),  # only a fence as long closes
        ("- " * 60 + "x\nafter", "after"),  # a rule: decided within 80 characters
        ("|" + "-" * 100 + "|\nafter", "after"),
        ("-" + " " * 90 + "x", "x"),
    ],
)
def test_line_markup_is_decided_the_same_way_in_any_chunks(text: str, expected: str) -> None:
    outputs = {feed_in_pieces(text, [cut]) for cut in range(len(text) + 1)}
    outputs.add(feed_in_pieces(text, list(range(len(text)))))
    assert len(outputs) == 1
    assert clean_text(text) == expected


def test_a_url_split_across_deltas_is_still_shortened() -> None:
    cleaner = MarkdownCleaner()
    out = [
        cleaner.feed(piece) for piece in ["Visit ht", "tps:/", "/docs.exa", "mple.com/x", " now"]
    ]
    assert out[0] == "Visit "  # "ht" may start a URL: held back
    assert "".join(out) + cleaner.flush() == "Visit docs.example.com now"


def test_a_link_waits_for_its_closing_parenthesis() -> None:
    cleaner = MarkdownCleaner()
    assert cleaner.feed("Read [the guide](https://exa") == "Read "
    assert cleaner.feed("mple.com) today") == "the guide today"


def test_flush_resets_for_the_next_reply() -> None:
    cleaner = MarkdownCleaner()
    cleaner.feed("```\ncode")
    assert cleaner.flush() == ""
    assert cleaner.feed("plain\n") == "plain\n"


# --------------------------------------------------------------------------------------------
# Emotions
# --------------------------------------------------------------------------------------------

FIRMWARE_EMOTIONS = [
    *("neutral", "happy", "laughing", "funny", "sad", "angry", "crying", "loving", "embarrassed"),
    *("surprised", "shocked", "thinking", "winking", "cool", "relaxed", "delicious", "kissy"),
    *("confident", "sleepy", "silly", "confused"),
]


def test_only_firmware_emotion_names_are_used() -> None:
    assert list(EMOTIONS) == FIRMWARE_EMOTIONS
    assert set(EMOJI_EMOTIONS.values()) == set(FIRMWARE_EMOTIONS)
    for name, emoji in EMOTIONS.items():
        assert emotion_for(emoji) == name


@pytest.mark.parametrize(
    ("emoji", "name"),
    [
        ("😊", "happy"),
        ("😂", "laughing"),
        ("😢", "sad"),
        ("😠", "angry"),
        ("🤔", "thinking"),
        ("😍", "loving"),
        ("😳", "embarrassed"),
        ("😲", "surprised"),
        ("😱", "shocked"),
        ("😉", "winking"),
        ("😎", "cool"),
        ("😌", "relaxed"),
        ("🤤", "delicious"),
        ("😘", "kissy"),
        ("😏", "confident"),
        ("😴", "sleepy"),
        ("😜", "silly"),
        ("🙄", "confused"),
        ("😐", "neutral"),
        ("😭", "crying"),
        ("🤣", "funny"),
        ("❤️", "loving"),
        ("👍🏽", "confident"),
        ("😵‍💫", "confused"),
        ("😶‍🌫️", "neutral"),
        ("🎃", None),
        ("a", None),
    ],
)
def test_emoji_to_emotion(emoji: str, name: str | None) -> None:
    assert emotion_for(emoji) == name


def test_emotion_named() -> None:
    assert emotion_named("thinking") == Emotion("thinking", "🤔")
    with pytest.raises(ValueError, match="unknown emotion 'grumpy'"):
        emotion_named("grumpy")


def test_leading_emotion_waits_for_the_whole_emoji() -> None:
    detector = LeadingEmotion()
    assert detector.feed("  ❤") is None  # a variation selector may follow
    assert detector.feed("\ufe0f") is None
    assert detector.feed(" hi") == Emotion("loving", "❤\ufe0f")
    assert detector.done and detector.feed("😊") is None


@pytest.mark.parametrize("text", ["hi 😊", "🎃 boo", "", "   "])
def test_no_leading_emotion(text: str) -> None:
    detector = LeadingEmotion()
    assert detector.feed(text) is None
    assert detector.feed("", final=True) is None
    assert detector.done
