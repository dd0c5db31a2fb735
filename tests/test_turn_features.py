"""The Smart Turn input features against the reference extractor, and the 8 s window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.plugins.speech.log_mel import N_FRAMES, N_MELS, WINDOW_SAMPLES, fit_window, log_mel, mel_filters

FIXTURE = Path(__file__).parent / "fixtures" / "log_mel_reference.npz"


def test_features_match_the_reference_extractor_on_real_speech() -> None:
    reference = np.load(FIXTURE)
    samples = reference["audio_int16"].astype(np.float32) / 32768.0
    features = log_mel(fit_window(samples))
    assert features.shape == (N_MELS, N_FRAMES) and features.dtype == np.float32
    np.testing.assert_allclose(features, reference["features"], rtol=0, atol=1e-5)


def test_the_reference_is_not_trivial() -> None:
    """The fixture holds speech: features vary over time and across the mel bands."""
    reference = np.load(FIXTURE)["features"]
    speech_frames = reference[:, -200:]
    assert speech_frames.std() > 0.1 and np.ptp(speech_frames.mean(axis=1)) > 0.5


def test_mel_filters_cover_the_band_with_unit_area_triangles() -> None:
    filters = mel_filters()
    assert filters.shape == (N_MELS, 201)
    assert (filters >= 0).all() and (filters.max(axis=1) > 0).all()
    # Each triangle peaks once: rising, then falling.
    peaks = filters.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()


@settings(max_examples=30, deadline=None)
@given(length=st.integers(min_value=1, max_value=2 * WINDOW_SAMPLES))
def test_the_window_keeps_the_last_8_seconds_or_pads_the_front(length: int) -> None:
    samples = np.arange(1, length + 1, dtype=np.float32)
    window = fit_window(samples)
    assert len(window) == WINDOW_SAMPLES
    kept = min(length, WINDOW_SAMPLES)
    np.testing.assert_array_equal(window[WINDOW_SAMPLES - kept :], samples[length - kept :])
    assert not window[: WINDOW_SAMPLES - kept].any()


def test_silence_and_constant_input_give_finite_features() -> None:
    for samples in (np.zeros(WINDOW_SAMPLES, np.float32), np.full(WINDOW_SAMPLES, 0.5, np.float32)):
        assert np.isfinite(log_mel(samples)).all()
