"""The utterance detector (sans-IO): listen state + VAD → utterance started / audio / ended."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.messages import (
    ListenStart,
    ListenStop,
    PcmChunk,
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    UtteranceStarted,
    VadEvent,
    WakeWordDetected,
)
from xiaozhi_trio.pipeline.stages.listen import MAX_UTTERANCE_SECONDS, UtteranceDetector

RATE = 16000


def chunk(seconds: float, value: float = 0.1) -> PcmChunk:
    return PcmChunk(np.full(round(seconds * RATE), value, dtype=np.float32), RATE)


@dataclass
class ScriptedVad:
    """A VAD stream that reports what the test tells it to, and records what it was fed."""

    script: list[list[VadEvent]] = field(default_factory=list)
    fed: int = 0
    resets: int = 0

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        self.fed += len(samples)
        return self.script.pop(0) if self.script else []

    def reset(self) -> None:
        self.resets += 1


class VadFactory:
    def __init__(self, vad: ScriptedVad | None = None) -> None:
        self.vad = vad or ScriptedVad()
        self.opened = 0

    def __call__(self) -> ScriptedVad:
        self.opened += 1
        return self.vad


def test_audio_while_not_listening_is_dropped_and_opens_no_vad():
    factory = VadFactory()
    detector = UtteranceDetector(factory)
    assert detector.audio(chunk(1.0)) == []
    assert factory.opened == 0 and not detector.needs_vad


def test_controls_pass_through_last_and_in_order():
    detector = UtteranceDetector(VadFactory())
    for control in (ListenStart("auto"), WakeWordDetected("hi"), ListenStop()):
        assert detector.control(control)[-1] is control


def test_manual_utterance_is_everything_between_start_and_stop():
    factory = VadFactory()
    detector = UtteranceDetector(factory)
    detector.control(ListenStart("manual"))
    pieces = [chunk(0.06, v) for v in (0.1, 0.2, 0.3)]
    outputs = [out for piece in pieces for out in detector.audio(piece)]
    assert isinstance(outputs[0], UtteranceStarted) and outputs[0].mode == "manual"
    assert [type(o) for o in outputs[1:]] == [SpeechAudio, SpeechAudio]
    stop = ListenStop()
    ended, passed = detector.control(stop)
    assert isinstance(ended, SpeechEnded) and passed is stop
    np.testing.assert_array_equal(ended.audio.samples, np.concatenate([p.samples for p in pieces]))
    assert factory.opened == 0  # push-to-talk never needs the VAD
    assert detector.audio(chunk(0.06)) == []  # not listening after the stop


def test_the_vad_decides_in_auto_mode_and_its_utterance_is_authoritative():
    start_audio, whole = chunk(0.3), chunk(0.9)
    vad = ScriptedVad(script=[[], [SpeechStarted(start_audio)], [], [SpeechEnded(whole)]])
    detector = UtteranceDetector(VadFactory(vad))
    detector.control(ListenStart("realtime"))
    assert detector.needs_vad
    detector.open_vad()
    outputs = [detector.audio(chunk(0.3)) for _ in range(4)]
    assert outputs[0] == []
    (started,) = outputs[1]
    assert isinstance(started, UtteranceStarted) and started.audio is start_audio and started.mode == "realtime"
    assert [type(o) for o in outputs[2]] == [SpeechAudio]
    assert [o.audio for o in outputs[3]] == [whole]


def test_a_wake_word_discards_the_utterance_in_progress():
    detector = UtteranceDetector(VadFactory())
    detector.control(ListenStart("manual"))
    detector.audio(chunk(0.5))
    assert [type(o) for o in detector.control(WakeWordDetected("你好小智"))] == [WakeWordDetected]
    # The next audio starts a fresh utterance (the old one is gone).
    (started,) = detector.audio(chunk(0.06))
    assert isinstance(started, UtteranceStarted) and started.audio.duration == 0.06


def test_an_utterance_is_ended_by_force_at_60_seconds_in_manual_mode():
    detector = UtteranceDetector(VadFactory())
    detector.control(ListenStart("manual"))
    outputs = [out for _ in range(65) for out in detector.audio(chunk(1.0))]
    ends = [o for o in outputs if isinstance(o, SpeechEnded)]
    assert len(ends) == 1
    assert ends[0].audio.duration == MAX_UTTERANCE_SECONDS + 1  # cut at the first chunk past 60 s
    # Listening goes on: the audio after the cut is a new utterance.
    after = outputs[outputs.index(ends[0]) + 1 :]
    assert isinstance(after[0], UtteranceStarted)
    ended, _stop = detector.control(ListenStop())
    assert isinstance(ended, SpeechEnded) and ended.audio.duration == 65 - 61


def test_an_utterance_the_vad_never_ends_is_ended_by_force_and_the_vad_reset():
    vad = ScriptedVad(script=[[SpeechStarted(chunk(1.0))]])
    detector = UtteranceDetector(VadFactory(vad))
    detector.control(ListenStart("auto"))
    resets_before = vad.resets
    outputs = [out for _ in range(62) for out in detector.audio(chunk(1.0))]
    ends = [o for o in outputs if isinstance(o, SpeechEnded)]
    assert len(ends) == 1 and ends[0].audio.duration == MAX_UTTERANCE_SECONDS + 1
    assert vad.resets == resets_before + 1
    assert not any(isinstance(o, SpeechAudio) for o in outputs[outputs.index(ends[0]) + 1 :])


actions = st.lists(
    st.one_of(
        st.sampled_from([ListenStart("manual"), ListenStop(), WakeWordDetected("x")]),
        st.floats(min_value=0.02, max_value=20.0).map(lambda s: round(s, 2)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(script=actions)
def test_push_to_talk_utterances_are_exactly_the_audio_heard(script):
    """Whatever the order of controls and audio: every ended utterance is exactly the audio
    since its start, no audio is reported outside an utterance, and none is longer than the
    forced limit plus one chunk."""
    detector = UtteranceDetector(VadFactory())
    current: list[np.ndarray] | None = None
    value = 0.0
    for step in script:
        if isinstance(step, float):
            value += 0.001
            outputs = detector.audio(chunk(step, value))
        else:
            outputs = detector.control(step)
        for out in outputs:
            match out:
                case UtteranceStarted(audio=audio):
                    assert current is None
                    current = [audio.samples]
                case SpeechAudio(audio=audio):
                    assert current is not None
                    current.append(audio.samples)
                case SpeechEnded(audio=audio):
                    assert current is not None
                    np.testing.assert_array_equal(audio.samples, np.concatenate(current))
                    assert audio.duration <= MAX_UTTERANCE_SECONDS + 20.0
                    current = None
                case WakeWordDetected() | ListenStart():
                    current = None  # the utterance in progress is dropped
                case ListenStop():
                    assert current is None  # a manual utterance ends before the stop passes
