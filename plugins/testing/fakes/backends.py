"""Test-double backends, registered as a plugin exactly as real ones are.

They behave like the real thing in what the pipeline relies on: the VAD finds voiced stretches by
energy, the recognizer "hears" a tone's pitch as a phrase registered for it, the agent streams its
answer in deltas and can be slow or fail, and the synthesizer produces audio in chunks at its own
sample rate. Timing (first-token delay, synthesis time) is simulated with trio sleeps, so tests
run under the autojump clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from xiaozhi_trio.pipeline.backends import AgentRequest, BackendContext, BackendError, TurnVerdict
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import AgentText, PcmChunk, Samples, SpeechEnded, SpeechStarted, VadEvent

from .workers import CpuWork

RATE = 16000

# --------------------------------------------------------------------------------------------
# "Speech": a phrase is spoken as a tone whose pitch the fake recognizer maps back to it
# --------------------------------------------------------------------------------------------

_PITCH_STEP = 50.0
_BASE_PITCH = 300.0
_phrases: dict[float, str] = {}


def pitch_for(phrase: str) -> float:
    for pitch, known in _phrases.items():
        if known == phrase:
            return pitch
    pitch = _BASE_PITCH + _PITCH_STEP * len(_phrases)
    _phrases[pitch] = phrase
    return pitch


def register_phrase(phrase: str, pitch: float) -> None:
    """Hear ``phrase`` at ``pitch`` Hz (for a recognizer in another process, which must agree on it)."""
    _phrases[pitch] = phrase


def tone(pitch: float, seconds: float = 1.0) -> Samples:
    """16 kHz of a sine at ``pitch`` Hz: what the fake recognizer hears as that pitch's phrase."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


def speech(phrase: str, seconds: float = 1.0) -> Samples:
    """16 kHz audio that the fake recognizer transcribes as ``phrase``."""
    return tone(pitch_for(phrase), seconds)


def hear(samples: Samples) -> str:
    """The phrase whose pitch dominates ``samples`` ("" for silence)."""
    if len(samples) < 512 or float(np.sqrt(np.mean(samples**2))) < 0.01:
        return ""
    spectrum = np.abs(np.fft.rfft(samples))
    peak = float(np.argmax(spectrum)) * RATE / len(samples)
    nearest = min(_phrases, key=lambda p: abs(p - peak), default=None)
    if nearest is None or abs(nearest - peak) > _PITCH_STEP / 2:
        return ""
    return _phrases[nearest]


# --------------------------------------------------------------------------------------------
# VAD: energy over 20 ms windows
# --------------------------------------------------------------------------------------------


class EnergyVadStream:
    WINDOW = 320

    def __init__(self, threshold: float, min_speech: float, min_silence: float, preroll: float) -> None:
        self.threshold = threshold
        self.min_speech_windows = max(1, round(min_speech * RATE / self.WINDOW))
        self.min_silence_windows = max(1, round(min_silence * RATE / self.WINDOW))
        self.preroll_windows = round(preroll * RATE / self.WINDOW)
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._history: list[Samples] = []  # recent windows, for the pre-roll
        self._speech: list[Samples] | None = None
        self._voiced_run = 0
        self._silent_run = 0

    def feed(self, samples: Samples) -> list[VadEvent]:
        events: list[VadEvent] = []
        self._pending = np.concatenate([self._pending, samples])
        while len(self._pending) >= self.WINDOW:
            window, self._pending = self._pending[: self.WINDOW], self._pending[self.WINDOW :]
            voiced = float(np.sqrt(np.mean(window**2))) >= self.threshold
            if self._speech is None:
                self._history = (self._history + [window])[-(self.preroll_windows + self.min_speech_windows) :]
                self._voiced_run = self._voiced_run + 1 if voiced else 0
                if self._voiced_run >= self.min_speech_windows:
                    self._speech = list(self._history)
                    self._silent_run = 0
                    # Like the real VAD: the start's audio runs to the end of the audio fed so far
                    # (the rest of this chunk becomes the utterance's next windows).
                    events.append(SpeechStarted(PcmChunk(np.concatenate([*self._speech, self._pending]), RATE)))
            else:
                self._speech.append(window)
                self._silent_run = 0 if voiced else self._silent_run + 1
                if self._silent_run >= self.min_silence_windows:
                    events.append(SpeechEnded(PcmChunk(np.concatenate(self._speech), RATE)))
                    self._speech, self._history, self._voiced_run = None, [], 0
        return events


@dataclass
class FakeVad:
    sample_rate: int = RATE
    threshold: float = 0.02
    min_speech: float = 0.06
    min_silence: float = 0.3
    preroll: float = 0.1
    streams_opened: int = 0

    def open_stream(self, min_silence_ms: float | None = None) -> EnergyVadStream:
        self.streams_opened += 1
        silence = self.min_silence if min_silence_ms is None else min_silence_ms / 1000
        return EnergyVadStream(self.threshold, self.min_speech, silence, self.preroll)


# --------------------------------------------------------------------------------------------
# ASR
# --------------------------------------------------------------------------------------------


class FakeRecognitionStream:
    def __init__(self, owner: FakeAsr) -> None:
        self.owner = owner

    async def accept(self, audio: PcmChunk) -> str | None:
        return None

    async def finish(self, utterance: PcmChunk) -> str:
        if self.owner.delay and self.owner.workers is not None:
            await self.owner.workers.run(CpuWork(self.owner.delay))
        elif self.owner.delay:
            await trio.sleep(self.owner.delay)
        self.owner.decoded.append((trio.current_time(), utterance.samples))
        if self.owner.fail:
            raise BackendError("recognizer exploded", kind="asr_test")
        text = hear(utterance.samples)
        self.owner.heard.append(text)
        return text


@dataclass
class FakeAsr:
    sample_rate: int = RATE
    delay: float = 0.0
    fail: bool = False
    heard: list[str] = field(default_factory=list)
    #: When set, ``delay`` is CPU time in this pool (see ``fakes/workers.py``), not a sleep.
    workers: Any = None
    #: Like a local offline model: the recognizer stage may decode segments while the user speaks.
    decodes_segments: bool = False
    #: Each ``finish`` call: when its decode was done (trio time) and the audio it was given.
    decoded: list[tuple[float, Samples]] = field(default_factory=list)

    def open_stream(self) -> FakeRecognitionStream:
        return FakeRecognitionStream(self)


# --------------------------------------------------------------------------------------------
# Agent
# --------------------------------------------------------------------------------------------


@dataclass
class FakeAgent:
    """Answers ``answers[text]`` (default: an echo), word by word."""

    answers: dict[str, str] = field(default_factory=dict)
    first_token_delay: float = 0.0
    delta_delay: float = 0.0
    #: Raise BackendError after this many deltas (None: never).
    fail_after: int | None = None
    requests: list[AgentRequest] = field(default_factory=list)
    cancelled: int = 0
    completed: int = 0

    def answer_for(self, text: str) -> str:
        return self.answers.get(text, f"You said {text}. That is all.")

    async def respond(self, request: AgentRequest, send: trio.MemorySendChannel[AgentText]) -> None:
        self.requests.append(request)
        try:
            await trio.sleep(self.first_token_delay)
            words = self.answer_for(request.text).split(" ")
            for index, word in enumerate(words):
                if self.fail_after is not None and index >= self.fail_after:
                    raise BackendError("agent service went away", kind="agent_test")
                await send.send(AgentText(word if index == 0 else " " + word))
                await trio.sleep(self.delta_delay)
            self.completed += 1
        except trio.Cancelled:
            self.cancelled += 1
            raise


# --------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------


@dataclass
class FakeTts:
    """A tone, ``seconds_per_char`` long per character, in 100 ms chunks, at 16 kHz."""

    sample_rate: int = RATE
    seconds_per_char: float = 0.02
    #: Simulated synthesis time per chunk (real-time factor = chunk_delay / 0.1).
    chunk_delay: float = 0.0
    fail_on: str | None = None
    spoken: list[str] = field(default_factory=list)
    #: When set, a sentence's synthesis time is one call in this pool (as sherpa-onnx makes a
    #: sentence in one worker call), taking ``chunk_delay`` per chunk of CPU time, not sleeps.
    workers: Any = None

    async def synthesize(self, text: str, send: trio.MemorySendChannel[PcmChunk]) -> None:
        if self.fail_on is not None and self.fail_on in text:
            raise BackendError(f"cannot say {text!r}", kind="tts_test")
        self.spoken.append(text)
        total = int(len(text) * self.seconds_per_char * self.sample_rate)
        t = np.arange(total) / self.sample_rate
        audio = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        step = self.sample_rate // 10
        if self.workers is not None:
            await self.workers.run(CpuWork(self.chunk_delay * len(range(0, total, step))))
        for start in range(0, total, step):
            if self.workers is None:
                await trio.sleep(self.chunk_delay)
            await send.send(PcmChunk(audio[start : start + step], self.sample_rate))


# --------------------------------------------------------------------------------------------
# Turn detection
# --------------------------------------------------------------------------------------------


@dataclass
class FakeTurn:
    """Hears the phrase before the pause (the utterance's last second) and calls the turn
    finished (0.97) when it is one of ``finished``, else unfinished (0.1), unless ``probabilities``
    gives the phrase its own answer; takes ``delay`` seconds, like a model in a worker."""

    sample_rate: int = RATE
    finished: set[str] = field(default_factory=set)
    probabilities: dict[str, float] = field(default_factory=dict)
    delay: float = 0.05
    fail: bool = False
    asked: list[str] = field(default_factory=list)

    async def predict(self, utterance: PcmChunk) -> TurnVerdict:
        await trio.sleep(self.delay)
        if self.fail:
            raise BackendError("turn model exploded", kind="turn_test")
        phrase = hear(utterance.samples[-RATE:])
        self.asked.append(phrase)
        probability = self.probabilities.get(phrase, 0.97 if phrase in self.finished else 0.1)
        return TurnVerdict(probability, probability > 0.5)


# --------------------------------------------------------------------------------------------
# The plugin
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)  # a plugin object must be hashable (pluggy keeps plugins in sets)
class FakeBackends:
    """A plugin whose backends are these instances (so tests can steer and inspect them)."""

    vad: FakeVad = field(default_factory=FakeVad)
    asr: FakeAsr = field(default_factory=FakeAsr)
    agent: FakeAgent = field(default_factory=FakeAgent)
    tts: FakeTts = field(default_factory=FakeTts)
    turn: FakeTurn = field(default_factory=FakeTurn)

    @hookimpl
    def xiaozhi_register_backends(self, registry: Any) -> None:
        def factory(instance: object) -> Any:
            def make(context: BackendContext, options: Mapping[str, Any]) -> object:
                return instance

            return make

        registry.add("vad", "fake", factory(self.vad), description="energy VAD (tests)")
        registry.add("asr", "fake", factory(self.asr), description="pitch-to-phrase recognizer (tests)")
        registry.add("agent", "fake", factory(self.agent), description="scripted agent (tests)")
        registry.add("tts", "fake", factory(self.tts), description="tone synthesizer (tests)")
        registry.add("turn", "fake", factory(self.turn), description="phrase-list turn detector (tests)")
