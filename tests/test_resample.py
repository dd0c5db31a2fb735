"""Streaming resampling: chunking never changes the result, lengths and pitch come out right."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.audio.resample import StreamResampler, resample

RATE_PAIRS = [(22050, 24000), (48000, 16000), (16000, 24000)]


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def split_at(samples: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    return np.split(samples, sorted(c % (len(samples) + 1) for c in cuts))


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_one_shot_keeps_pitch_and_duration(in_rate: int, out_rate: int) -> None:
    out = resample(tone(1000, in_rate, 1.0), in_rate, out_rate)
    assert out.dtype == np.float32
    assert len(out) == out_rate
    assert abs(dominant_frequency(out, out_rate) - 1000) <= 2


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from(RATE_PAIRS),
    length=st.integers(min_value=0, max_value=30000),
    cuts=st.lists(st.integers(min_value=0), max_size=25),
)
def test_chunked_matches_one_shot(pair: tuple[int, int], length: int, cuts: list[int]) -> None:
    in_rate, out_rate = pair
    rng = np.random.default_rng(length)
    samples = (0.3 * rng.standard_normal(length) + tone(440, in_rate, length / in_rate)).astype(np.float32)
    stream = StreamResampler(in_rate, out_rate)
    pieces = [stream.process(piece) for piece in split_at(samples, cuts)]
    chunked = np.concatenate([*pieces, stream.flush()])
    whole = resample(samples, in_rate, out_rate)
    assert chunked.dtype == np.float32
    assert len(chunked) == len(whole)
    assert abs(len(chunked) - length * out_rate / in_rate) <= 1
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_no_click_at_chunk_edges(in_rate: int, out_rate: int) -> None:
    # 60 ms chunks of a pure tone must come out as the same tone sampled at out_rate. (Resampling
    # each chunk on its own misses it by 1e-3 to 6e-3 around every edge.)
    samples = tone(300, in_rate, 1.0)
    stream = StreamResampler(in_rate, out_rate)
    step = in_rate * 60 // 1000
    out = np.concatenate([stream.process(samples[i : i + step]) for i in range(0, len(samples), step)])
    ideal = tone(300, out_rate, 1.0)[: len(out)]
    edge = out_rate // 20  # the filter's start-up and the not-yet-flushed end
    assert len(out) > out_rate * 0.9
    assert np.max(np.abs(out - ideal)[edge:-edge]) < 1e-4


def test_stream_restarts_after_flush() -> None:
    samples = tone(700, 22050, 0.3)
    stream = StreamResampler(22050, 24000)
    first = np.concatenate([stream.process(samples), stream.flush()])
    second = np.concatenate([stream.process(samples), stream.flush()])
    np.testing.assert_array_equal(first, second)


def test_equal_rates_pass_through_without_copy() -> None:
    samples = tone(440, 16000, 0.1)
    stream = StreamResampler(16000, 16000)
    assert stream.process(samples) is samples
    assert len(stream.flush()) == 0
    assert resample(samples, 16000, 16000) is samples


def test_float64_input_is_converted() -> None:
    out = StreamResampler(16000, 16000).process(np.zeros(10, dtype=np.float64))
    assert out.dtype == np.float32


@pytest.mark.parametrize("bad", [np.zeros((2, 10), dtype=np.float32), np.float32(0.5)])
def test_rejects_non_mono(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected mono samples"):
        StreamResampler(16000, 24000).process(bad)
    with pytest.raises(ValueError, match="expected mono samples"):
        resample(bad, 16000, 24000)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5])
def test_rejects_bad_rates(rate: object) -> None:
    with pytest.raises(ValueError, match="positive whole number of Hz"):
        StreamResampler(rate, 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive whole number of Hz"):
        resample(np.zeros(4, dtype=np.float32), 16000, rate)  # type: ignore[arg-type]
