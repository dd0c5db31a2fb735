"""The segment cutter (pipeline/stages/asr_segments.py): whatever the audio, pauses and rebases,
the segments it keeps and the tail cover the final utterance exactly once, in order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.stages.asr_segments import CutRule, SegmentCutter

RATE = 16000
FRAME = 320


def tone(seconds: float, level: float = 0.3, freq: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def covers_exactly(cutter: SegmentCutter, final: np.ndarray) -> None:
    plan = cutter.finish(final)
    position = 0
    pieces = []
    for segment in plan.segments:
        assert segment.start == position, "segments must follow each other with no gap or overlap"
        pieces.append(segment.samples)
        position = segment.stop
    if plan.tail is not None:
        assert plan.tail.start == position
        pieces.append(plan.tail.samples)
        position = plan.tail.stop
    assert position == len(final)
    joined = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    assert np.array_equal(joined, final)
    numbers = [s.number for s in plan.segments]
    assert numbers == sorted(numbers)


RULE = CutRule(first_silence=0.08, gap=0.2, min_segment=1.0, max_segment=4.0)


def test_a_pause_between_phrases_keeps_the_cut_made_at_its_first_silence() -> None:
    cutter = SegmentCutter(RULE, RATE)
    cuts, withdrawn = cutter.feed(np.concatenate([tone(1.2), quiet(0.1)]))
    # The quiet reached 80 ms at 1.28 s: a tentative cut 40 ms into it, decoded at once.
    assert [c.stop for c in cuts] == [round(1.24 * RATE)] and cuts[0].voiced and withdrawn == []
    assert cutter.feed(quiet(0.15)) == ([], [])
    assert cutter.feed(tone(0.5)) == ([], [])  # 250 ms of quiet: a real pause, the cut stays
    assert [s.stop for s in cutter.segments] == [round(1.24 * RATE)]
    covers_exactly(cutter, np.concatenate([tone(1.2), quiet(0.25), tone(0.5)]))


def test_a_short_quiet_inside_a_phrase_withdraws_the_cut() -> None:
    """A stop consonant's silence starts a decode, but speech resuming within ``gap`` withdraws
    it: a recognizer decoding each side alone would get the words at the cut wrong."""
    cutter = SegmentCutter(RULE, RATE)
    (cut,), _ = cutter.feed(np.concatenate([tone(1.2), quiet(0.1)]))
    cuts, withdrawn = cutter.feed(tone(0.5))
    assert cuts == [] and withdrawn == [cut] and cutter.segments == ()


def test_a_cut_in_a_short_segment_is_withdrawn_even_after_a_pause() -> None:
    cutter = SegmentCutter(RULE, RATE)
    (cut,), _ = cutter.feed(np.concatenate([tone(0.4), quiet(0.3)]))
    assert cutter.feed(tone(0.5)) == ([], [cut])


def test_first_silence_cuts_the_last_segment_and_leaves_a_silent_tail() -> None:
    """When the user stops, the quiet after the last word cuts it: at the end only silence is
    left, which needs no decode."""
    cutter = SegmentCutter(RULE, RATE)
    speech = np.concatenate([tone(0.5), quiet(0.3)])
    cutter.feed(speech[: round(0.6 * RATE)])
    assert [s.stop for s in cutter.segments] == [round(0.54 * RATE)]
    plan = cutter.finish(speech)
    assert plan.tail is not None and not plan.tail.voiced
    covers_exactly(SegmentCutter(), speech)


def test_a_long_stretch_without_a_pause_is_cut_at_its_quietest_frame() -> None:
    cutter = SegmentCutter(RULE, RATE)
    audio = tone(4.5)
    dip = round(3.0 * RATE)
    audio[dip : dip + FRAME] *= 0.3  # softer, but not quiet
    cuts, _ = cutter.feed(audio)
    assert [c.stop for c in cuts] == [dip]


def test_a_pause_cuts_at_the_end_and_a_rebase_drops_what_the_utterance_left_out() -> None:
    cutter = SegmentCutter(RULE, RATE)
    first = tone(0.5)
    cutter.feed(np.concatenate([first, quiet(0.04)]))  # too short a quiet for a first silence
    (paused,), _ = cutter.cut()
    assert paused.stop == round(0.54 * RATE)
    # The listen stage's utterance so far ends earlier (it left out silence): the segment goes.
    dropped = cutter.rebase(np.concatenate([first, quiet(0.02)]))
    assert dropped == [paused]
    assert cutter.cut_at == 0


def test_a_silent_utterance_needs_no_decode() -> None:
    cutter = SegmentCutter(RULE, RATE)
    cutter.feed(quiet(4.5))
    plan = cutter.finish(quiet(4.5))
    assert not any(s.voiced for s in plan.segments) and (plan.tail is None or not plan.tail.voiced)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """Random utterances (tone bursts, gaps, level changes), fed in random chunks, with pauses
    (cut + rebase to a truncated prefix, as the listen stage does) and speech resuming."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps: list[tuple[str, np.ndarray]] = []
    utterance: list[np.ndarray] = []  # what the final utterance really is
    for _ in range(draw(st.integers(1, 4))):  # stretches of speech between pauses
        parts = []
        for _ in range(draw(st.integers(1, 6))):
            length = draw(st.integers(1, 30)) * 0.03 + draw(st.integers(0, 319)) / RATE
            if draw(st.booleans()):
                parts.append(tone(length, draw(st.sampled_from([0.01, 0.1, 0.5]))))
            else:
                parts.append((rng.normal(0, 1e-4, round(length * RATE))).astype(np.float32))
        heard = np.concatenate(parts)
        extra = quiet(draw(st.integers(0, 20)) * 0.01)  # silence heard before the pause is decided
        position = 0
        running = np.concatenate([heard, extra])
        while position < len(running):
            size = draw(st.integers(1, 2000))
            steps.append(("feed", running[position : position + size]))
            position += size
        utterance.append(heard)
        if draw(st.booleans()):
            steps.append(("cut", np.zeros(0, np.float32)))
        steps.append(("rebase", np.concatenate(utterance)))
    return steps, np.concatenate(utterance)


@settings(max_examples=150, deadline=None)
@given(sessions(), st.sampled_from([CutRule(), CutRule(first_silence=0.02, gap=0.04, min_segment=0.2, max_segment=0.5)]))
def test_segments_and_tail_cover_the_final_utterance_exactly_once(
    session: tuple[list[tuple[str, np.ndarray]], np.ndarray], rule: CutRule
) -> None:
    steps, final = session
    cutter = SegmentCutter(rule, RATE)
    for action, samples in steps:
        if action == "feed":
            cuts, withdrawn = cutter.feed(samples)
            for segment in cuts:
                assert segment.stop <= cutter.samples and len(segment.samples) > 0
            assert not set(withdrawn) & set(cutter.segments)
        elif action == "cut":
            cutter.cut()
        else:
            cutter.rebase(samples)
        # At every moment the segments kept are consecutive pieces of the audio so far.
        position = 0
        for segment in cutter.segments:
            assert segment.start == position and len(segment.samples) > 0
            position = segment.stop
        assert position <= cutter.samples
    covers_exactly(cutter, final)


def test_inconsistent_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        CutRule(min_segment=0.05, gap=0.08)
    with pytest.raises(ValueError):
        CutRule(first_silence=0.3, gap=0.2)
