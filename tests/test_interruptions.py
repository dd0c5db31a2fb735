"""The interruption rule: coughs, clicks and backchannels do not stop a reply; questions do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.session.interruptions import BACKCHANNELS, InterruptionRule, count_words, normalize

RULE = InterruptionRule(min_voiced_seconds=0.6, min_words=2)


@pytest.mark.parametrize(
    ("text", "words"),
    [("stop talking", 2), ("停一下", 3), ("OK", 1), ("uh-huh", 1), ("wait, what's 3 plus 4?", 5), ("等等 wait", 3), ("", 0)],
)
def test_word_counts(text: str, words: int) -> None:
    assert count_words(text) == words


@pytest.mark.parametrize("text", ["嗯", "嗯嗯。", "Uh-huh.", "OK!", "okay", "mm-hmm", "Yeah.", "好的", "对对对", "  哦 "])
def test_backchannels_do_not_interrupt(text: str) -> None:
    assert RULE.is_backchannel(text)
    assert not RULE.interrupts(2.0, text)
    assert not RULE.answers(text, 2.0)


@pytest.mark.parametrize("text", ["stop please", "Wait, what did you say?", "停一下", "等等", "不对"])
def test_real_interruptions_do(text: str) -> None:
    assert RULE.interrupts(0.8, text) and RULE.answers(text, 0.8)


def test_a_cough_or_click_is_too_short_whatever_it_sounds_like() -> None:
    assert not RULE.interrupts(0.3)
    assert not RULE.interrupts(0.3, "stop please")
    assert not RULE.answers("stop please", 0.3)
    assert RULE.interrupts(0.6)  # enough voice and no words known yet: the voice decides


def test_one_word_is_not_enough_by_default_but_is_configurable() -> None:
    assert not RULE.interrupts(1.0, "stop")
    assert InterruptionRule(min_words=1).interrupts(1.0, "stop")


@given(st.sampled_from(sorted(BACKCHANNELS)), st.sampled_from(["", ".", "!", "。", "？", " ", "..."]), st.booleans())
def test_every_backchannel_is_recognised_with_any_punctuation_or_case(word: str, mark: str, upper: bool) -> None:
    text = (word.upper() if upper else word) + mark
    assert RULE.is_backchannel(text), text


@given(st.text(max_size=30), st.floats(min_value=0.0, max_value=5.0))
def test_answering_implies_interrupting(text: str, seconds: float) -> None:
    if RULE.answers(text, seconds):
        assert RULE.interrupts(seconds, text)
    assert normalize(normalize(text)) == normalize(text)
