"""The silero VAD backend: its segmentation core, its options, and the real model on real audio."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.backends import BackendContext, ConfigError
from xiaozhi_trio.pipeline.messages import SpeechEnded, SpeechStarted
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.vad import POSTROLL_SECONDS, Segmenter, VadOptions

from .contracts.models import silero_vad
from xiaozhi_trio.plugins.testing.speech import QUESTIONS, RATE, beckett, joined, silence, spoken, white_noise
from .contracts.vad_contract import FRAME, VadCase, VadContract, feed_all, kinds
from xiaozhi_trio.plugins.testing.fakes.backends import FakeVad, speech

# --------------------------------------------------------------------------------------------
# The contract, for every VAD backend
# --------------------------------------------------------------------------------------------


class TestVadBackends(VadContract):
    @pytest.fixture(params=[pytest.param("silero", marks=pytest.mark.models), "fake-energy"])
    def vad_case(self, request: pytest.FixtureRequest) -> VadCase:
        if request.param == "silero":
            return VadCase(silero_vad(), spoken(QUESTIONS[1]))
        return VadCase(FakeVad(), speech("turn on the lights", seconds=1.2))


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_options_have_defaults() -> None:
    assert VadOptions.parse({}) == VadOptions(threshold=0.5, min_silence_ms=500, min_speech_ms=250, preroll_ms=300)
    assert VadOptions.parse({"min_silence_ms": 800}).min_silence_ms == 800.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"treshold": 0.5}, "unknown key(s) in [vad]: treshold; valid keys: min_silence_ms, min_speech_ms"),
        ({"threshold": "high"}, "[vad] threshold must be float, not str 'high'"),
        ({"threshold": True}, "[vad] threshold must be float, not bool True"),
        ({"threshold": 1.5}, "[vad] threshold must be between 0.01 and 0.99, not 1.5"),
        ({"min_silence_ms": -1}, "[vad] min_silence_ms must be between 0 and 10000, not -1"),
        ({"preroll_ms": 5000}, "[vad] preroll_ms must be between 0 and 2000, not 5000"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        VadOptions.parse(options)
    assert str(caught.value).startswith(message)


# --------------------------------------------------------------------------------------------
# The segmentation core, with a stand-in decision. Each test sample's value encodes its position
# (sample i is i / 1e6), so an utterance shows exactly where in the input it came from; which
# positions are "speech" is given by a mask.
# --------------------------------------------------------------------------------------------

_SCALE = 1e6


def _script(pattern: list[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Position-coded audio and its speech mask, from (seconds, voiced) blocks."""
    mask = np.concatenate([np.full(round(seconds * RATE), voiced) for seconds, voiced in pattern])
    return (np.arange(len(mask)) / _SCALE).astype(np.float32), mask


def _segmenter(mask: np.ndarray, **options: float) -> Segmenter:
    def is_speech(window: np.ndarray) -> bool:
        last = round(float(window[-1]) * _SCALE)
        return bool(mask[last - 511 : last + 1].mean() > 0.5)

    return Segmenter(is_speech, VadOptions.parse(options), window_size=576)


def _span(samples: np.ndarray) -> tuple[int, int]:
    """Where in the input an utterance came from: [first, last + 1)."""
    first, last = round(float(samples[0]) * _SCALE), round(float(samples[-1]) * _SCALE)
    assert np.array_equal(samples, (np.arange(first, last + 1) / _SCALE).astype(np.float32)), "not contiguous"
    return first, last + 1


def test_utterance_spans_the_speech_with_preroll_and_postroll() -> None:
    audio, mask = _script([(1.0, False), (1.0, True), (2.0, False)])
    events = feed_all(_segmenter(mask), audio)
    assert kinds(events) == ["start", "end"]
    start, end = _span(events[1].audio.samples)
    # From the pre-roll before the onset (the onset is known within a window and its lag)...
    assert RATE - 0.3 * RATE - 2 * 576 <= start <= RATE - 0.3 * RATE
    # ...to the post-roll after the last voiced window.
    assert 2 * RATE + POSTROLL_SECONDS * RATE - 576 <= end <= 2 * RATE + POSTROLL_SECONDS * RATE + 576
    assert _span(events[0].audio.samples)[0] == start


def test_events_come_when_the_minimum_durations_have_passed() -> None:
    audio, mask = _script([(1.0, False), (1.0, True), (2.0, False)])
    started_at = ended_at = None
    stream = _segmenter(mask, min_speech_ms=250, min_silence_ms=500)
    for position in range(0, len(audio), 160):
        for event in stream.feed(audio[position : position + 160]):
            if isinstance(event, SpeechStarted):
                started_at = position + 160
            else:
                ended_at = position + 160
    assert started_at is not None and ended_at is not None
    # Positions in the audio (not wall-clock): decided within a window or two of the minimum.
    assert 0.25 * RATE - 576 <= started_at - RATE <= 0.25 * RATE + 2 * 576
    assert 0.5 * RATE <= ended_at - 2 * RATE <= 0.5 * RATE + 2 * 576


def test_short_blips_are_not_speech() -> None:
    audio, mask = _script([(0.5, False), (0.1, True), (0.5, False), (0.12, True), (1.0, False)])
    assert feed_all(_segmenter(mask, min_speech_ms=250), audio) == []


def test_a_preroll_never_reaches_into_the_previous_utterance() -> None:
    audio, mask = _script([(0.5, False), (1.0, True), (0.55, False), (1.0, True), (1.0, False)])
    events = feed_all(_segmenter(mask, preroll_ms=1000), audio)
    spans = [_span(e.audio.samples) for e in events if isinstance(e, SpeechEnded)]
    assert len(spans) == 2
    assert spans[0][1] <= spans[1][0]
    assert spans[0][0] == 0  # the first pre-roll is cut at the start of the stream


def test_non_mono_input_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        _segmenter(np.zeros(100, bool)).feed(np.zeros((2, 100), np.float32))


@pytest.mark.models
def test_nan_input_does_not_break_the_stream() -> None:
    vad = silero_vad()
    stream = vad.open_stream()
    assert stream.feed(np.full(2000, np.nan, np.float32)) == []
    audio = joined(silence(0.5), spoken(QUESTIONS[1]), silence(1.5))
    assert kinds(feed_all(stream, audio)) == ["start", "end"]


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.lists(st.tuples(st.floats(0.05, 1.2), st.booleans()), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 6000), min_size=1, max_size=12),
)
def test_any_chunking_gives_the_same_utterances(pattern: list[tuple[float, bool]], cuts: list[int]) -> None:
    audio, mask = _script(pattern + [(0.6, False)])
    whole = feed_all(_segmenter(mask), audio, [len(audio)])
    chunked = feed_all(_segmenter(mask), audio, cuts)
    assert kinds(whole) == kinds(chunked)
    for a, b in zip(whole, chunked, strict=True):
        if isinstance(a, SpeechEnded):
            assert np.array_equal(a.audio.samples, b.audio.samples)
        else:  # a start's audio runs to the end of its chunk: same beginning, either is a prefix
            assert _span(a.audio.samples)[0] == _span(b.audio.samples)[0]
    # Utterances never overlap and come in order.
    spans = [_span(e.audio.samples) for e in whole if isinstance(e, SpeechEnded)]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# --------------------------------------------------------------------------------------------
# The real model on real audio
# --------------------------------------------------------------------------------------------


@pytest.mark.models
def test_finds_the_two_phrases_around_a_pause() -> None:
    first, second = spoken(QUESTIONS[0]), spoken(QUESTIONS[2])
    audio = joined(silence(0.5), first, silence(1.0), second, silence(1.0))
    events = feed_all(silero_vad().open_stream(), audio)
    assert kinds(events) == ["start", "end", "start", "end"]
    # Each utterance holds its phrase: compare where it is in the input with where the phrase is.
    spans = []
    offset = 0
    for event in events[1::2]:
        samples = event.audio.samples
        position = _find(audio, samples, offset)
        spans.append((position / RATE, (position + len(samples)) / RATE))
        offset = position + len(samples)
    first_span = (0.5, 0.5 + len(first) / RATE)
    second_span = (first_span[1] + 1.0, first_span[1] + 1.0 + len(second) / RATE)
    for (start, end), (phrase_start, phrase_end) in zip(spans, [first_span, second_span], strict=True):
        assert phrase_start - 0.45 <= start <= phrase_start + 0.1
        assert phrase_end - 0.15 <= end <= phrase_end + 0.45


def _find(audio: np.ndarray, part: np.ndarray, start: int) -> int:
    """Where ``part`` (a slice of ``audio``) begins, searching from ``start``."""
    for position in range(start, len(audio) - len(part) + 1):
        if audio[position] == part[0] and np.array_equal(audio[position : position + len(part)], part):
            return position
    raise AssertionError("the utterance is not a slice of the input")


@pytest.mark.models
def test_beckett_has_six_phrases() -> None:
    # "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better." with pauses between.
    events = feed_all(silero_vad().open_stream(), joined(beckett(), silence(1.0)))
    assert kinds(events) == ["start", "end"] * 6


@pytest.mark.models
@pytest.mark.parametrize("rms", [0.001, 0.01, 0.05, 0.2])
def test_white_noise_is_not_speech(rms: float) -> None:
    assert feed_all(silero_vad().open_stream(), white_noise(5.0, rms=rms, seed=7)) == []


@pytest.mark.models
def test_speech_in_noise_is_still_found() -> None:
    phrase = spoken(QUESTIONS[3])
    clean = joined(silence(1.0), phrase, silence(1.5))
    noisy = clean + white_noise(len(clean) / RATE, rms=0.005, seed=3)
    assert kinds(feed_all(silero_vad().open_stream(), noisy)) == ["start", "end"]


@pytest.mark.models
def test_a_longer_min_silence_joins_phrases_across_a_short_pause() -> None:
    audio = joined(silence(0.5), spoken(QUESTIONS[0]), silence(0.7), spoken(QUESTIONS[2]), silence(2.0))
    assert kinds(feed_all(silero_vad(min_silence_ms=500).open_stream(), audio)) == ["start", "end"] * 2
    assert kinds(feed_all(silero_vad(min_silence_ms=1000).open_stream(), audio)) == ["start", "end"]


@pytest.mark.models
def test_streams_share_one_network_and_stay_independent() -> None:
    vad = silero_vad()
    first_audio = joined(silence(0.5), spoken(QUESTIONS[0]), silence(1.0))
    second_audio = joined(silence(0.2), spoken(QUESTIONS[3]), silence(0.3), white_noise(0.5, 0.01), silence(1.3))
    alone = [feed_all(vad.open_stream(), audio) for audio in (first_audio, second_audio)]
    # Interleaved frame by frame on the same network, each gives what it gives alone.
    streams = [vad.open_stream(), vad.open_stream()]
    together: list[list] = [[], []]
    for start in range(0, max(len(first_audio), len(second_audio)), FRAME):
        for index, audio in enumerate((first_audio, second_audio)):
            if start < len(audio):
                together[index].extend(streams[index].feed(audio[start : start + FRAME]))
    for mine, reference in zip(together, alone, strict=True):
        assert kinds(mine) == kinds(reference) and kinds(mine)
        assert all(np.array_equal(a.audio.samples, b.audio.samples) for a, b in zip(mine, reference, strict=True))


def test_a_file_that_is_not_a_silero_model_is_a_clear_error(tmp_path: Path) -> None:
    from xiaozhi_trio.pipeline.backends import BackendUnavailable
    from xiaozhi_trio.plugins.speech.vad import SileroNetwork

    broken = tmp_path / "silero_vad.onnx"
    broken.write_bytes(b"not an onnx file" * 100)
    with pytest.raises(BackendUnavailable, match="not a usable Silero v5 model"):
        SileroNetwork(broken)


@pytest.mark.models
def test_a_reused_model_starts_from_a_clean_state() -> None:
    vad = silero_vad()
    audio = joined(silence(0.5), spoken(QUESTIONS[4]), silence(1.5))
    first = feed_all(vad.open_stream(), audio)
    stream = vad.open_stream()
    feed_all(stream, joined(silence(0.3), spoken(QUESTIONS[5])))  # left mid-speech
    del stream
    gc.collect()
    again = feed_all(vad.open_stream(), audio)
    assert kinds(first) == kinds(again) == ["start", "end"]
    assert np.array_equal(first[1].audio.samples, again[1].audio.samples)


@pytest.mark.models
def test_the_plugin_registers_silero_and_checks_its_options(tmp_path: Path) -> None:
    plugins = Plugins()
    assert "silero" in plugins.backends.names("vad")
    context = BackendContext(data_dir=tmp_path, workers=CpuWorkers(1))
    vad = plugins.backends.create("vad", "silero", context, {"min_silence_ms": 700})
    assert vad.sample_rate == 16000
    assert (tmp_path / "models" / "silero-vad" / "silero_vad.onnx").is_file()
    with pytest.raises(ConfigError, match="min_silence"):
        plugins.backends.create("vad", "silero", context, {"min_silence": 700})


@pytest.mark.models
def test_each_window_is_classified_once() -> None:
    # One model call per 32 ms step, whatever the chunking (VAD cost is counted, not timed).
    calls = 0
    vad = silero_vad()
    stream = vad.open_stream()
    inner = stream._segmenter._is_speech

    def counting(window: np.ndarray) -> bool:
        nonlocal calls
        calls += 1
        return inner(window)

    stream._segmenter._is_speech = counting
    audio = beckett()
    feed_all(stream, audio, [FRAME])
    assert calls == (len(audio) - 576) // 512 + 1
