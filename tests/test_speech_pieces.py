"""Cutting utterances into pieces the recognizer handles well, and joining their texts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.plugins.speech.pieces import FRAME, PAD_SECONDS, join_texts, speech_pieces

from xiaozhi_trio.plugins.testing.speech import QUESTIONS, RATE, joined, silence, spoken, white_noise

# --------------------------------------------------------------------------------------------
# Utterance pieces and their texts
# --------------------------------------------------------------------------------------------


def test_silence_and_near_silence_have_no_pieces() -> None:
    assert speech_pieces(silence(3.0), 15) == []
    assert speech_pieces(white_noise(3.0, rms=1e-5), 15) == []
    assert speech_pieces(np.zeros(100, np.float32), 15) == []


def test_long_quiet_ends_are_trimmed() -> None:
    phrase = spoken(QUESTIONS[0])
    audio = joined(silence(2.0), phrase, silence(3.0))
    [(start, stop, zeros)] = speech_pieces(audio, 15)
    assert 2.0 * RATE - PAD_SECONDS * RATE - FRAME <= start <= 2.0 * RATE
    assert 2.0 * RATE + len(phrase) <= stop <= 2.0 * RATE + len(phrase) + PAD_SECONDS * RATE + FRAME
    assert zeros == 0  # the audio has quiet enough after the speech


def test_zeros_make_up_the_quiet_after_speech_that_stops_abruptly() -> None:
    phrase = spoken(QUESTIONS[0])
    [(start, stop, zeros)] = speech_pieces(joined(silence(0.5), phrase), 15)
    assert stop == len(phrase) + round(0.5 * RATE)
    assert PAD_SECONDS * RATE - 2 * FRAME <= zeros <= PAD_SECONDS * RATE
    [(_, _, fewer)] = speech_pieces(joined(silence(0.5), phrase, silence(0.1)), 15)
    assert fewer <= zeros - 0.1 * RATE + FRAME


def test_a_long_utterance_is_cut_in_its_pauses() -> None:
    parts = [spoken(q) for q in QUESTIONS]
    audio = joined(*[joined(p, silence(0.4)) for p in parts])
    pieces = speech_pieces(audio, 6.0)
    assert len(pieces) >= 3
    assert all(stop - start <= 6.0 * RATE for start, stop, _ in pieces)
    # Every cut falls in one of the pauses between sentences, never inside one.
    pauses, position = [], 0
    for p in parts:
        position += len(p)
        pauses.append((position, position + round(0.4 * RATE)))
        position += round(0.4 * RATE)
    for (_, stop, _), (start, _, _) in zip(pieces, pieces[1:]):
        assert any(lo - FRAME <= stop and start <= hi + FRAME for lo, hi in pauses), (stop, start)


@settings(max_examples=80, deadline=None)
@given(
    blocks=st.lists(st.tuples(st.floats(0.02, 4.0), st.sampled_from([0.0, 0.002, 0.1, 0.3])), min_size=1, max_size=12),
    max_seconds=st.floats(2.0, 8.0),
)
def test_pieces_cover_every_loud_frame_within_the_limit(blocks: list[tuple[float, float]], max_seconds: float) -> None:
    rng = np.random.default_rng(0)
    audio = joined(*[rng.normal(0, level, round(s * RATE)).astype(np.float32) for s, level in blocks])
    pieces = speech_pieces(audio, max_seconds)
    assert all(0 <= start < stop <= len(audio) and zeros >= 0 for start, stop, zeros in pieces)
    assert all(a[1] <= b[0] for a, b in zip(pieces, pieces[1:]))
    assert all(stop - start <= max_seconds * RATE + FRAME for start, stop, _ in pieces)
    covered = np.zeros(len(audio), bool)
    for start, stop, _ in pieces:
        covered[start:stop] = True
    frames = len(audio) // FRAME
    rms = np.sqrt(np.mean(audio[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2, axis=1))
    if frames and np.percentile(rms, 95) >= 3e-4:
        loud = np.flatnonzero(rms >= max(0.1 * np.percentile(rms, 95), 3e-4))
        assert all(covered[f * FRAME : (f + 1) * FRAME].all() for f in loud)


def test_texts_are_joined_with_spaces_except_between_cjk() -> None:
    assert join_texts(["Hello there.", "", " How are you? "]) == "Hello there. How are you?"
    assert join_texts(["今天天气", "怎么样"]) == "今天天气怎么样"
    assert join_texts(["打开", "WiFi"]) == "打开WiFi"
    assert join_texts([]) == ""
