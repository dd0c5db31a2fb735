"""What every VAD backend must do. Subclass ``VadContract`` with a ``vad_case`` fixture.

A case gives the detector and a stretch of audio that it must treat as speech (real speech for a
real model; whatever a test double detects for a fake).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xiaozhi_trio.pipeline.backends import VoiceActivityDetector
from xiaozhi_trio.pipeline.messages import SpeechEnded, SpeechStarted, VadEvent

from xiaozhi_trio.plugins.testing.speech import joined, silence

#: 60 ms at 16 kHz: what a device's Opus frame decodes to.
FRAME = 960


@dataclass
class VadCase:
    detector: VoiceActivityDetector
    #: One spoken phrase (no leading or trailing silence to speak of), at the detector's rate.
    speech: np.ndarray


def feed_all(stream: object, samples: np.ndarray, sizes: list[int] | None = None) -> list[VadEvent]:
    """Feed ``samples`` in chunks of ``sizes`` (cycled; default 60 ms) and collect the events."""
    sizes = sizes or [FRAME]
    events: list[VadEvent] = []
    position, index = 0, 0
    while position < len(samples):
        size = sizes[index % len(sizes)]
        events.extend(stream.feed(samples[position : position + size]))  # type: ignore[attr-defined]
        position += size
        index += 1
    return events


def kinds(events: list[VadEvent]) -> list[str]:
    return ["start" if isinstance(e, SpeechStarted) else "end" for e in events]


class VadContract:
    """The contract suite; the subclass provides the ``vad_case`` fixture."""

    def test_silence_gives_no_events(self, vad_case: VadCase) -> None:
        stream = vad_case.detector.open_stream()
        assert feed_all(stream, silence(3.0)) == []

    def test_one_phrase_is_one_utterance(self, vad_case: VadCase) -> None:
        rate = vad_case.detector.sample_rate
        speech = vad_case.speech
        events = feed_all(vad_case.detector.open_stream(), joined(silence(1.0), speech, silence(1.5)))
        assert kinds(events) == ["start", "end"]
        started, ended = events
        assert started.audio.sample_rate == ended.audio.sample_rate == rate
        assert started.audio.samples.dtype == ended.audio.samples.dtype == np.float32
        # The start's audio is the beginning of the utterance, and the utterance holds the phrase.
        assert len(started.audio.samples) <= len(ended.audio.samples)
        assert np.array_equal(ended.audio.samples[: len(started.audio.samples)], started.audio.samples)
        assert len(speech) * 0.9 <= len(ended.audio.samples) <= len(speech) + 2.5 * rate
        assert np.sum(ended.audio.samples**2) >= 0.95 * np.sum(speech**2)

    def test_a_pause_separates_two_utterances(self, vad_case: VadCase) -> None:
        audio = joined(silence(0.5), vad_case.speech, silence(1.0), vad_case.speech, silence(1.5))
        events = feed_all(vad_case.detector.open_stream(), audio)
        assert kinds(events) == ["start", "end", "start", "end"]

    def test_chunking_does_not_change_the_utterances(self, vad_case: VadCase) -> None:
        audio = joined(silence(0.5), vad_case.speech, silence(1.0), vad_case.speech, silence(1.5))
        results = []
        for sizes in ([len(audio)], [FRAME], [1, 4096, 333, 17, 960 * 3], [160]):
            events = feed_all(vad_case.detector.open_stream(), audio, sizes)
            results.append([e.audio.samples for e in events if isinstance(e, SpeechEnded)])
        for other in results[1:]:
            assert len(other) == len(results[0]) == 2
            for a, b in zip(results[0], other, strict=True):
                assert np.array_equal(a, b)

    def test_reset_forgets_speech_in_progress(self, vad_case: VadCase) -> None:
        stream = vad_case.detector.open_stream()
        events = feed_all(stream, joined(silence(0.5), vad_case.speech))
        assert kinds(events) == ["start"]
        stream.reset()
        assert feed_all(stream, silence(2.0)) == []
        # ...and the stream works normally afterwards.
        assert kinds(feed_all(stream, joined(vad_case.speech, silence(1.5)))) == ["start", "end"]

    def test_streams_are_independent(self, vad_case: VadCase) -> None:
        talking, quiet = vad_case.detector.open_stream(), vad_case.detector.open_stream()
        audio = joined(silence(0.5), vad_case.speech, silence(1.5))
        quiet_audio = silence(len(audio) / vad_case.detector.sample_rate)
        events: list[VadEvent] = []
        for start in range(0, len(audio), FRAME):
            events.extend(talking.feed(audio[start : start + FRAME]))
            assert quiet.feed(quiet_audio[start : start + FRAME]) == []
        alone = feed_all(vad_case.detector.open_stream(), audio)
        assert kinds(events) == kinds(alone) == ["start", "end"]
        assert np.array_equal(events[1].audio.samples, alone[1].audio.samples)
