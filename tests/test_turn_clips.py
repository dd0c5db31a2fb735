"""The turn-taking clips (``plugins/testing/turn_clips.py``): where each kind of broken-off
sentence is cut, that the pause is exactly what was asked for, and that the clips are the same
every time (Piper's take 0 included)."""

from __future__ import annotations

import numpy as np
import pytest

from xiaozhi_trio.plugins.testing import turn_clips
from xiaozhi_trio.plugins.testing.speech import joined, silence, white_noise
from xiaozhi_trio.plugins.testing.turn_clips import HALVES_EN, HALVES_ZH, KINDS, broken, gap_near, sentence, utterances

RATE = 16000


def test_each_kind_is_the_same_sentence_said_another_way() -> None:
    halves = HALVES_EN[0]
    assert sentence(halves, "en", "comma") == "I would like to know, the weather in Shanghai."
    assert sentence(halves, "en", "word") == "I would like to know the weather in Shanghai."
    assert sentence(halves, "en", "hesitation", 0) == "I would like to know um, the weather in Shanghai."
    assert sentence(halves, "en", "hesitation", 1) == "I would like to know uh, the weather in Shanghai."
    assert sentence(HALVES_ZH[0], "zh", "hesitation") == "你能不能嗯，帮我定一个闹钟。"
    assert turn_clips.BROKEN_EN[0] == "I would like to know, the weather in Shanghai."


def test_a_cut_goes_to_the_nearest_quiet_stretch() -> None:
    burst = white_noise(0.3, rms=0.1)
    audio = joined(burst, silence(0.05), burst, silence(0.1), burst)
    # Quiet at 0.30-0.35 s and 0.65-0.75 s.
    assert gap_near(audio, 0.36) == (4800, 5600)
    assert gap_near(audio, 0.62) == (10400, 12000)
    with pytest.raises(ValueError):
        gap_near(audio, 5.0)


def test_words_that_run_together_are_cut_at_their_quietest_point() -> None:
    loud, soft = white_noise(0.3, rms=0.1), white_noise(0.04, rms=0.02, seed=1)
    audio = joined(loud, soft, loud)
    start, end = gap_near(audio, 0.3, 0.1)
    assert start == end and 0.29 * RATE <= start <= 0.35 * RATE


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("language", "voice"), [("en", "en-us"), ("zh", "cmn")])
def test_a_broken_off_sentence_has_exactly_the_pause_asked_for_mid_sentence(kind: str, language: str, voice: str) -> None:
    halves = (HALVES_EN if language == "en" else HALVES_ZH)[2]
    whole = turn_clips.speak(sentence(halves, language, kind, 2), voice)
    clip = broken(halves, language, voice, kind, 0.6, index=2)
    assert clip.kind == kind and not clip.complete and clip.pause_samples == round(0.6 * RATE)
    pause = clip.samples[clip.pause_at : clip.pause_at + clip.pause_samples]
    assert not pause.any()
    # Speech on both sides; what was cut out is at most a quiet stretch.
    assert 0.15 < clip.pause_at / len(whole) < 0.85
    assert len(whole) - 0.3 * RATE <= len(clip.samples) - clip.pause_samples <= len(whole)
    assert np.abs(clip.before_pause).max() > 0.05 and np.abs(clip.samples[clip.pause_at + clip.pause_samples :]).max() > 0.05


@pytest.mark.parametrize(("language", "voice", "halves"), [("en", "en-us", HALVES_EN[0]), ("zh", "cmn", HALVES_ZH[0])])
def test_a_comma_clip_is_cut_at_the_commas_silence_and_a_word_clip_near_the_same_words(language: str, voice: str, halves: tuple[str, str]) -> None:
    comma = broken(halves, language, voice, "comma", 0.5)
    whole = turn_clips.speak(sentence(halves, language, "comma"), voice)
    assert comma.pause_at == turn_clips.longest_gap(whole)[0]  # espeak-ng's comma is its longest silence
    word = broken(halves, language, voice, "word", 0.5)
    # Said in one go the first half is shorter than before a comma, but not by much.
    assert comma.pause_at - 0.5 * RATE < word.pause_at < comma.pause_at + 0.1 * RATE


def test_piper_take_0_is_the_same_audio_every_time() -> None:
    text = "Tell me about the history of Rome."
    first = turn_clips.piper(text, 0)
    turn_clips._piper_bytes.cache_clear()
    assert np.array_equal(first, turn_clips.piper(text, 0))
    clip = broken(HALVES_EN[2], "en", "piper", "word", 0.4)
    turn_clips._piper_bytes.cache_clear()
    assert np.array_equal(clip.samples, broken(HALVES_EN[2], "en", "piper", "word", 0.4).samples)


def test_utterances_by_kind_and_voice() -> None:
    clips = utterances((0.4, 0.9), kinds=("word",), voices=("en-us", "cmn"))
    complete = [c for c in clips if c.complete]
    assert len(complete) == len(turn_clips.COMPLETE_EN) + len(turn_clips.COMPLETE_ZH)
    assert {c.kind for c in clips if not c.complete} == {"word"}
    assert len(clips) - len(complete) == 2 * (len(HALVES_EN) + len(HALVES_ZH))
    again = utterances((0.4, 0.9), kinds=("word",), voices=("en-us", "cmn"))
    assert all(np.array_equal(a.samples, b.samples) and a.pause_at == b.pause_at for a, b in zip(clips, again, strict=True))
    with pytest.raises(ValueError, match="kinds: comma, word, hesitation"):
        utterances(kinds=("mumble",))
