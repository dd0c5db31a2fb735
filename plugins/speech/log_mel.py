"""Whisper-style log-mel features in numpy: what the Smart Turn model reads.

The recipe (the one Hugging Face's ``WhisperFeatureExtractor`` follows, with an 8 s window):

1. exactly ``WINDOW_SAMPLES`` samples at 16 kHz (the caller keeps the last 8 s of the turn, or
   pads the front with zeros; anything else here is padded or cut at the end);
2. the waveform normalised to zero mean and unit variance, in float32;
3. a centred power spectrogram: reflect padding of half a frame on each side, 400-sample periodic
   Hann frames every 160 samples, ``|rfft|²``;
4. 80 triangular mel filters on the Slaney scale, each scaled to unit area;
5. ``log10`` with a floor of 1e-10, the last frame dropped (800 frames remain), values clamped to
   at most 8 below the maximum, then mapped by ``(x + 4) / 4``.

``tests/test_turn_features.py`` holds the result to the reference extractor's output on fixed
audio (``tests/fixtures/log_mel_reference.npz``, made by ``tests/fixtures/make_log_mel_reference.py``).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
N_FFT = 400
HOP = 160
N_MELS = 80
#: Frames the model takes: one per hop over the window (the extra centred frame is dropped).
N_FRAMES = WINDOW_SAMPLES // HOP
_LOG_FLOOR = 1e-10
_VARIANCE_EPSILON = 1e-7
_DYNAMIC_RANGE = 8.0


def _hz_to_slaney_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Linear below 1 kHz (3 mels per 200 Hz), logarithmic above it.
    linear = hz * 3.0 / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, logarithmic, linear)


def _slaney_mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear = mel * 200.0 / 3.0
    logarithmic = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, logarithmic, linear)


@cache
def mel_filters() -> npt.NDArray[np.float64]:
    """The (N_MELS, N_FFT // 2 + 1) filter bank: triangles on the Slaney mel scale, unit area."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_mel = np.linspace(_hz_to_slaney_mel(np.array(0.0)), _hz_to_slaney_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    edges = _slaney_mel_to_hz(edges_mel)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    return triangles * (2.0 / (upper - lower))


@cache
def _hann() -> npt.NDArray[np.float64]:
    # Periodic (not symmetric) Hann window, as torch.hann_window makes it.
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


def fit_window(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The last ``WINDOW_SAMPLES`` of ``samples``, or all of them after leading zeros."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(audio) >= WINDOW_SAMPLES:
        return audio[len(audio) - WINDOW_SAMPLES :]
    return np.concatenate([np.zeros(WINDOW_SAMPLES - len(audio), dtype=np.float32), audio])


def log_mel(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The (N_MELS, N_FRAMES) float32 features of 16 kHz mono ``samples`` (see the module doc)."""
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"log_mel needs mono (1-D) audio, not shape {audio.shape}")
    audio = np.pad(audio[:WINDOW_SAMPLES], (0, max(0, WINDOW_SAMPLES - len(audio))))
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + np.float32(_VARIANCE_EPSILON))
    padded = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    frame_count = 1 + (len(padded) - N_FFT) // HOP
    starts = np.arange(frame_count)[:, None] * HOP
    frames = padded[starts + np.arange(N_FFT)[None, :]]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=1)) ** 2
    mel = np.log10(np.maximum(mel_filters() @ power.T, _LOG_FLOOR))[:, :-1]
    mel = np.maximum(mel, mel.max() - _DYNAMIC_RANGE)
    return ((mel + 4.0) / 4.0).astype(np.float32)
