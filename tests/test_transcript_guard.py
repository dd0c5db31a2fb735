"""The guards that keep a recognizer's loops and runaway text away from the agent."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xiaozhi_trio.plugins.speech.transcript_guard import (
    LENGTH_SLACK,
    MAX_WORDS_PER_SECOND,
    cap_length,
    cut_loops,
    guard_transcript,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The loop the round-trip test once saw from Moonshine.
        (
            "remind me to call my mother tonight remind me to call my mother tonight remind me to call my mother",
            "remind me to call my mother tonight",
        ),
        (
            "Remind me to call my mother tonight. Remind me to call my mother tonight. Remind me to call my",
            "Remind me to call my mother tonight.",
        ),
        # Twice is enough for a phrase of four words or more; case and punctuation do not matter.
        ("Turn the volume down, turn the volume down", "Turn the volume down,"),
        ("What is the weather what is the weather like today?", "What is the weather like today?"),
        # A word looping inside a sentence; the rest of the sentence stays.
        ("The cat sat on the the the the the the mat.", "The cat sat on the mat."),
        ("提醒我给妈妈打电话提醒我给妈妈打电话提醒我给妈", "提醒我给妈妈打电话"),
        ("好的好的好的好的好的好的", "好的"),
        # The spacing at the cut is the text's own.
        ("remind remind remind remind remind 好", "remind 好"),
        ("好好好好好 remind", "好 remind"),
        # What people do say is kept.
        ("no no", "no no"),
        ("no no no", "no no no"),
        ("bye bye", "bye bye"),
        ("turn it up turn it up", "turn it up turn it up"),
        ("谢谢谢谢", "谢谢谢谢"),
        ("The cat. The cat sat on the mat.", "The cat. The cat sat on the mat."),
        ("That that is is that that is not is not", "That that is is that that is not is not"),
        ("", ""),
    ],
)
def test_cut_loops(text: str, expected: str) -> None:
    assert cut_loops(text) == expected


def test_two_loops_in_one_text_are_both_cut() -> None:
    text = "set the volume to five set the volume to five and then play some jazz music play some jazz music play some"
    assert cut_loops(text) == "set the volume to five and then play some jazz music"


def test_cap_length_follows_the_duration() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    assert len(cap_length(words, 1.0).split()) == int(MAX_WORDS_PER_SECOND) + LENGTH_SLACK
    assert len(cap_length(words, 10.0).split()) == int(10 * MAX_WORDS_PER_SECOND) + LENGTH_SLACK
    assert cap_length("Hello there.", 0.5) == "Hello there."
    # CJK characters are shorter to say than words.
    chinese = "今天天气很好我们出去走走吧" * 5
    capped = cap_length(chinese, 1.0)
    assert chinese.startswith(capped) and 10 <= len(capped) < 20


def test_guard_cuts_the_loop_before_measuring() -> None:
    loop = " ".join(["remind me to call my mother tonight"] * 6)
    assert guard_transcript(loop, 2.5) == "remind me to call my mother tonight"


WORDS = ["remind", "me", "to", "call", "my", "mother", "tonight", "no", "the", "好", "的", "OK."]


@given(st.lists(st.sampled_from(WORDS), max_size=60))
def test_cut_loops_only_removes_words_and_keeps_their_order(words: list[str]) -> None:
    text = " ".join(words)
    result = cut_loops(text)
    original = re.findall(r"\w+", text.lower())
    kept = re.findall(r"\w+", result.lower())
    iterator = iter(original)
    assert all(word in iterator for word in kept)  # a subsequence
    assert len(kept) <= len(original)


@given(
    st.lists(st.sampled_from(WORDS[:7]), min_size=4, max_size=10, unique=True),
    st.integers(2, 6),
    st.integers(0, 3),
)
def test_any_repeated_phrase_of_four_words_comes_back_once(phrase: list[str], copies: int, partial: int) -> None:
    text = " ".join(phrase * copies + phrase[:partial])
    assert cut_loops(text) == " ".join(phrase)


@given(st.text(max_size=200), st.floats(0.0, 30.0))
def test_cap_length_keeps_a_prefix_within_the_budget(text: str, seconds: float) -> None:
    capped = cap_length(text, seconds)
    assert text.startswith(capped)
    # A word as people count them: "don't" is one (the guard's own rule for apostrophes).
    words = re.findall(r"[^\W\u3400-\u9fff]+(?:['’][^\W\u3400-\u9fff]+)*", capped)
    assert len(words) <= seconds * MAX_WORDS_PER_SECOND + LENGTH_SLACK
