"""Real speech to test with: a recording shipped in a wheel, and sentences spoken by espeak-ng.

espeak-ng (Debian package ``espeak-ng``) is required: CI installs it. Audio is mono float32 at
16 kHz.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from importlib.resources import files as package_files

import numpy as np
import soundfile as sf
import soxr

RATE = 16000

#: Samuel Beckett, "Worstward Ho" (1983), as read in moonshine-cpp's test recording.
BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."

#: Things people ask a voice assistant (spoken by espeak-ng in the tests).
QUESTIONS = (
    "What is the weather like in Beijing today?",
    "Please turn on the living room lights.",
    "Set a timer for ten minutes.",
    "How far away is the moon?",
    "Play some relaxing music.",
    "What time is it in London?",
    "Remind me to call my mother tomorrow morning.",
    "How do you make a cup of green tea?",
)


def beckett() -> np.ndarray:
    """moonshine-cpp's ten-second test recording (16 kHz)."""
    path = package_files("moonshine_cpp").joinpath("test-data", "beckett.wav")
    samples, rate = sf.read(io.BytesIO(path.read_bytes()), dtype="float32")
    assert rate == RATE
    return samples


@functools.cache
def _spoken(text: str, voice: str, words_per_minute: int) -> bytes:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("these tests need espeak-ng: apt-get install -y espeak-ng")
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, RATE).astype(np.float32).tobytes()


def spoken(text: str, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng, at 16 kHz, without the silence espeak-ng adds at its ends."""
    samples = np.frombuffer(_spoken(text, voice, words_per_minute), dtype=np.float32)
    voiced = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[voiced[0] : voiced[-1] + 1].copy()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def white_noise(seconds: float, rms: float = 0.05, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, rms, round(seconds * RATE)).astype(np.float32)


def joined(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32)
