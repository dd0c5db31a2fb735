"""Everything that flows between the stages of a device session.

Read this module first. A device session is a row of trio tasks joined by memory channels::

    websocket ─▶ uplink decode ─▶ VAD ─▶ ASR ─▶ controller ─▶ (one turn:) agent ─▶ sentence
    splitter ─▶ TTS ─▶ Opus encoder ─▶ paced sender ─▶ websocket

Each arrow carries one of the small, frozen dataclasses below. Control signals are types of their
own, never sentinels, so a stage dispatches with ``match`` and a type checker sees every case.

Audio is always mono float32 in [-1, 1] (what sherpa-onnx and soxr want); it becomes int16 or Opus
only at the codec boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class PcmChunk:
    """A piece of mono audio at a known sample rate."""

    samples: Samples
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    @classmethod
    def silence(cls, seconds: float, sample_rate: int) -> PcmChunk:
        """A chunk of digital silence."""
        return cls(np.zeros(round(seconds * sample_rate), dtype=np.float32), sample_rate)

    @classmethod
    def join(cls, chunks: list[PcmChunk], sample_rate: int) -> PcmChunk:
        """Concatenate chunks that share ``sample_rate`` (an empty list gives an empty chunk)."""
        for chunk in chunks:
            if chunk.sample_rate != sample_rate:
                raise ValueError(f"cannot join {chunk.sample_rate} Hz audio into {sample_rate} Hz")
        if not chunks:
            return cls(np.zeros(0, dtype=np.float32), sample_rate)
        return cls(np.concatenate([c.samples for c in chunks]).astype(np.float32, copy=False), sample_rate)


@dataclass(frozen=True, slots=True)
class OpusPacket:
    """One Opus packet, as carried in one binary WebSocket message (after unframing)."""

    data: bytes
    #: Milliseconds, from a version-2 header; 0 where the framing carries none.
    timestamp_ms: int = 0


# --------------------------------------------------------------------------------------------
# Uplink: what the VAD and ASR stages say about the user's speech
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SpeechStarted:
    """The user started speaking. ``audio`` is the speech so far, with a short pre-roll."""

    audio: PcmChunk


@dataclass(frozen=True, slots=True, eq=False)
class SpeechAudio:
    """More audio of an utterance in progress (for streaming recognizers)."""

    audio: PcmChunk


@dataclass(frozen=True, slots=True, eq=False)
class SpeechEnded:
    """The utterance is over. ``audio`` is all of it, pre-roll included."""

    audio: PcmChunk


@dataclass(frozen=True, slots=True, eq=False)
class SpeechPaused:
    """The user paused mid-utterance; the turn may or may not be over. ``audio`` is the utterance
    so far (what a recognizer may start decoding while the turn detector decides)."""

    audio: PcmChunk


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """The user spoke again after a ``SpeechPaused``: the same utterance goes on."""


VadEvent = SpeechStarted | SpeechEnded


@dataclass(frozen=True, slots=True, eq=False)
class UtteranceStarted:
    """An utterance began while the device listened in ``mode`` (from the VAD's speech start, or
    the first audio after a push-to-talk ``listen start``). ``audio`` is the speech so far."""

    audio: PcmChunk
    mode: str


@dataclass(frozen=True, slots=True)
class SpeechProgress:
    """How far the utterance in progress has got: its voiced seconds so far and, from a streaming
    recognizer, the words heard so far (None: none known). Lets barge-in ignore coughs and
    backchannels."""

    seconds: float
    words: str | None = None
    #: The listen mode the utterance was heard in.
    mode: str = ""


@dataclass(frozen=True, slots=True)
class Transcript:
    """The final text of one utterance. ``speech_ended_at`` is trio time at the end of speech."""

    text: str
    speech_ended_at: float
    #: The utterance itself (for optional recordings).
    audio: PcmChunk | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RecognitionFailed:
    """The recognizer failed on an utterance; the user hears an apology."""

    kind: str
    message: str


# --------------------------------------------------------------------------------------------
# Downlink: one turn's reply, from agent text to Opus packets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentText:
    """A delta of the agent's spoken answer (any length, from one character to a paragraph)."""

    text: str


@dataclass(frozen=True, slots=True)
class AgentFailed:
    """The agent's answer broke off. The sentence it was in the middle of is not finished, so it
    is dropped (or ended at its last complete clause); ``apology`` is spoken instead."""

    apology: str


#: What the agent stage hands to the sentence splitter.
AgentOutput = AgentText | AgentFailed


@dataclass(frozen=True, slots=True)
class Emotion:
    """The face the device should show (sent as the ``llm`` message)."""

    name: str
    emoji: str = ""


@dataclass(frozen=True, slots=True)
class Sentence:
    """A piece of the reply ready for TTS: cleaned of markdown and emoji, never empty."""

    text: str


@dataclass(frozen=True, slots=True)
class SentenceStart:
    """Marks where a sentence's audio begins in the downlink stream (the device shows ``text``)."""

    text: str


@dataclass(frozen=True, slots=True)
class SentenceEnd:
    """Marks where a sentence's audio ends in the downlink stream."""

    text: str


#: What the sentence splitter stage hands to TTS.
SplitterOutput = Sentence | Emotion
#: What TTS hands to the encoder: audio framed by sentence marks, emotions passed through.
SpeechOutput = SentenceStart | PcmChunk | SentenceEnd | Emotion
#: What the encoder hands to the paced sender.
EncodedOutput = SentenceStart | OpusPacket | SentenceEnd | Emotion


# --------------------------------------------------------------------------------------------
# Device control (parsed from the device's JSON text frames)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioParams:
    """The ``audio_params`` of a hello."""

    format: str = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60


@dataclass(frozen=True, slots=True)
class DeviceHello:
    """The device's first text frame."""

    version: int = 1
    transport: str = "websocket"
    audio_params: AudioParams = field(default_factory=AudioParams)
    features: dict[str, object] = field(default_factory=dict)

    @property
    def supports_mcp(self) -> bool:
        return bool(self.features.get("mcp"))


@dataclass(frozen=True, slots=True)
class ListenStart:
    """``listen start``: the device opens its microphone in ``mode`` (auto, manual or realtime)."""

    mode: str


@dataclass(frozen=True, slots=True)
class ListenStop:
    """``listen stop``: push-to-talk released (ends the turn in manual mode)."""


@dataclass(frozen=True, slots=True)
class WakeWordDetected:
    """``listen detect``: the device heard its wake word (``text``)."""

    text: str


@dataclass(frozen=True, slots=True)
class TypedText:
    """``listen detect`` whose text is not a wake word: a message the user typed."""

    text: str


@dataclass(frozen=True, slots=True)
class Abort:
    """``abort``: stop speaking now."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class McpMessage:
    """``mcp``: a JSON-RPC 2.0 message from the device's MCP server."""

    payload: dict[str, object]


DeviceControl = ListenStart | ListenStop | WakeWordDetected | TypedText | Abort | McpMessage
#: The controls that travel in order with the uplink audio, through decode, VAD and ASR.
UplinkControl = ListenStart | ListenStop | WakeWordDetected
