"""Sample-rate conversion for mono float32 audio, on soxr.

Audio is resampled in two places: the uplink (Opus decodes at 48 kHz, VAD and ASR want 16 kHz) and
the downlink (TTS voices speak at 22.05 kHz or 16 kHz, the device expects what the server hello
announced, usually 24 kHz). Both are streams that arrive in pieces, so :class:`StreamResampler`
keeps soxr's filter state between pieces; resampling each piece on its own would put a click at
every piece boundary.
"""

from __future__ import annotations

import numpy as np
import soxr

from xiaozhi_trio.pipeline.messages import Samples

#: soxr's "high quality" preset: transparent for speech, and its delay stays under 30 ms here.
QUALITY = "HQ"


def _as_samples(samples: Samples) -> Samples:
    """Check the shape and give a contiguous float32 view (a copy only when the dtype differs)."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got an array of shape {array.shape}")
    return np.ascontiguousarray(array)


def _check_rate(name: str, rate: int) -> None:
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {rate!r}")


class StreamResampler:
    """Resample one continuous stream that arrives in chunks of any size.

    Output lags input by the filter's delay (a few hundred samples); :meth:`flush` returns what
    is still held back. When ``in_rate == out_rate`` chunks pass through untouched (no copy).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        _check_rate("in_rate", in_rate)
        _check_rate("out_rate", out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=QUALITY)

    def process(self, samples: Samples) -> Samples:
        """Resample the next chunk of the stream; returns whatever output is ready (may be empty)."""
        samples = _as_samples(samples)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples)

    def flush(self) -> Samples:
        """End the stream: return the held-back tail. The resampler can then start a new stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        # soxr refuses input after a last chunk; clearing rewinds it to a fresh stream.
        self._stream.clear()
        return tail


def resample(samples: Samples, in_rate: int, out_rate: int) -> Samples:
    """Resample a whole clip in one go (returns ``samples`` itself when the rates are equal)."""
    _check_rate("in_rate", in_rate)
    _check_rate("out_rate", out_rate)
    samples = _as_samples(samples)
    if in_rate == out_rate:
        return samples
    return soxr.resample(samples, in_rate, out_rate, quality=QUALITY)
