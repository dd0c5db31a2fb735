"""Session events: what a session reports to observers (logging, metrics, plugins).

Every event carries the session and device ids and ``at``, trio's clock when it happened, so an
observer can compute per-stage latencies of a turn (end of speech → transcript → first agent text →
first sentence → first audio) from the differences. Observers receive them through the
``xiaozhi_session_event`` hook; they must be quick and must not raise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEvent:
    session_id: str
    device_id: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpened(SessionEvent):
    client_id: str
    protocol_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(SessionEvent):
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEndDetected(SessionEvent):
    """End of the user's speech (VAD or ``listen stop``): where turn latency is measured from."""

    utterance_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptReady(SessionEvent):
    text: str
    speech_ended_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnStarted(SessionEvent):
    turn: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstAgentText(SessionEvent):
    turn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstSentence(SessionEvent):
    turn: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstAudio(SessionEvent):
    """The first downlink Opus packet of a turn went out."""

    turn: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnded(SessionEvent):
    turn: int
    #: ``"completed"``, ``"interrupted"`` or ``"failed"``.
    outcome: str
    sentences: int
    audio_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionError(SessionEvent):
    """Something went wrong but the session goes on (or closes cleanly)."""

    #: A short label: ``"agent"``, ``"asr"``, ``"tts"``, ``"protocol"``, ``"bad_audio"``, …
    kind: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentUsage(SessionEvent):
    """Tokens an agent reported for a turn."""

    input_tokens: int
    output_tokens: int
