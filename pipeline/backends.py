"""The kinds of backend a session is built from, as typed protocols.

A backend object is made once per process by the factory a plugin registered (see ``hookspecs``) and
shared by every session. Anything per-session or per-utterance (a VAD state, a recognition stream)
comes from an ``open_stream()`` call on it.

Backends do CPU-heavy work through ``BackendContext.workers`` so that all sessions share the cores
fairly and the event loop never stalls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from .messages import AgentText, PcmChunk, Samples, VadEvent

if TYPE_CHECKING:
    from .store.conversations import ConversationStore
    from .workers import CpuWorkers


class BackendError(Exception):
    """A backend failed; the turn ends with a short apology and the session goes on.

    ``kind`` is a short machine-readable label for logs and metrics (``"timeout"``, ``"auth"``,
    ``"rate_limit"``, ``"coze_4016"``, …).
    """

    def __init__(self, message: str, *, kind: str = "backend") -> None:
        super().__init__(message)
        self.kind = kind


class ConfigError(Exception):
    """The configuration (or a backend's options) is wrong; the message says exactly how."""


class BackendUnavailable(ConfigError):
    """A backend is configured right but cannot run on this machine (its model is not installed,
    or its file is unreadable). For an optional kind (``turn``) the server goes on without it.

    ``broken`` tells a damaged install (a missing or corrupt file: an error in ``check``) from
    one that simply is not there yet (a note in ``check``).
    """

    def __init__(self, message: str, *, broken: bool = False) -> None:
        super().__init__(message)
        self.broken = broken


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory gets besides its own options."""

    data_dir: Path
    workers: CpuWorkers
    #: Where downloaded and prepared models live (``data_dir / "models"`` unless configured).
    models_dir: Path = field(default=Path())
    #: Per-device agent memory (conversation ids, chat history), kept across reconnects.
    conversations: ConversationStore | None = None

    def __post_init__(self) -> None:
        if self.models_dir == Path():
            object.__setattr__(self, "models_dir", self.data_dir / "models")


# --------------------------------------------------------------------------------------------
# VAD
# --------------------------------------------------------------------------------------------


class VadStream(Protocol):
    """Per-session voice activity state.

    ``feed`` and ``reset`` are called **on the event loop**, synchronously, once per uplink packet
    (every 20-60 ms) of every listening session, so their cost is paid by every session at once:
    keep a call well under a millisecond (Silero takes ~0.1 ms per 32 ms window). A detector that
    needs more CPU than that cannot hide it here; do its heavy setup in ``open_stream`` instead.
    """

    def feed(self, samples: Samples) -> list[VadEvent]:
        """Take 16 kHz float32 samples; return speech started / ended events, in order.

        Runs on the event loop: must not block, do I/O or take long (see the class docstring).
        """
        ...

    def reset(self) -> None:
        """Forget any speech in progress (used when the device stops listening)."""
        ...


class VoiceActivityDetector(Protocol):
    sample_rate: int

    def open_stream(self, min_silence_ms: float | None = None) -> VadStream:
        """A fresh per-session stream. Called in a worker thread (``CpuWorkers``) when a session
        first listens, so it may be slow (load or copy a model). ``min_silence_ms`` overrides the
        configured silence that ends an utterance (the turn policy wants short pauses reported);
        it is only ever passed when a turn detector is in use."""
        ...


# --------------------------------------------------------------------------------------------
# ASR
# --------------------------------------------------------------------------------------------


class RecognitionStream(Protocol):
    """One utterance's recognition.

    Offline recognizers ignore ``accept`` and decode the whole utterance in ``finish``; streaming
    recognizers decode as audio arrives and return partial text from ``accept``.
    """

    async def accept(self, audio: PcmChunk) -> str | None:
        """Feed more of the utterance; return new partial text, or None if nothing changed."""
        ...

    async def finish(self, utterance: PcmChunk) -> str:
        """The utterance is over (``utterance`` is all of it); return the final text."""
        ...


class SpeechRecognizer(Protocol):
    sample_rate: int

    def open_stream(self) -> RecognitionStream:
        ...


# --------------------------------------------------------------------------------------------
# Agent
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """A tool an agent may call: a device MCP tool or a server-side tool from a plugin."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool = False


@runtime_checkable
class ToolBox(Protocol):
    """The tools available in one session."""

    async def list_tools(self) -> list[ToolSpec]:
        ...

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        ...


@dataclass(frozen=True)
class AgentRequest:
    """One user turn for the agent."""

    #: Stable per device (the ``Device-Id`` header): keys the agent's memory.
    device_id: str
    session_id: str
    text: str
    tools: ToolBox | None = None
    #: Call with (input_tokens, output_tokens) when the service reports usage.
    report_usage: Callable[[int, int], None] | None = None


class Agent(Protocol):
    async def respond(self, request: AgentRequest, send: trio.MemorySendChannel[AgentText]) -> None:
        """Stream the answer to ``request`` as ``AgentText`` deltas into ``send``.

        Must not close ``send``. Raise ``BackendError`` on failure. Cancellation (barge-in) can
        arrive at any await; the agent must leave its service ready for the next turn.
        """
        ...


# --------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------


class SpeechSynthesizer(Protocol):
    sample_rate: int

    async def synthesize(self, text: str, send: trio.MemorySendChannel[PcmChunk]) -> None:
        """Speak ``text`` into ``send`` as chunks at ``sample_rate``, as soon as each is ready.

        Must not close ``send``. The pipeline resamples to the downlink rate.
        """
        ...


# --------------------------------------------------------------------------------------------
# Turn detection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnVerdict:
    """Whether the user's turn sounds finished, with the model's probability that it is."""

    probability: float
    complete: bool


class TurnDetector(Protocol):
    """Semantic end-of-turn detection, asked at each short pause in the user's speech.

    A call costs tens of milliseconds of CPU, so it is made only a few times per utterance, and
    the backend does the work through ``BackendContext.workers`` (never on the event loop).
    """

    sample_rate: int

    async def predict(self, utterance: PcmChunk) -> TurnVerdict:
        """``utterance`` is the user's speech so far (ending in the pause); is the turn over?

        Raise ``BackendError`` on failure: the policy then waits for the silence limit.
        """
        ...


#: Every kind of backend a session is built from, with the backend used when the config's table
#: names none. This is the one list of kinds: the config's backend tables, the registry's check and
#: ``App.build`` all read it, so a new kind is one line here (plus its protocol above and the
#: ``App`` field that holds the built backend).
BACKEND_KINDS: Mapping[str, str] = MappingProxyType({
    "vad": "silero",
    "asr": "sherpa-onnx",
    "agent": "coze",
    "tts": "sherpa-onnx",
    "turn": "smart-turn",
})

#: The kinds' names, in the order above.
KINDS: tuple[str, ...] = tuple(BACKEND_KINDS)
#: Kinds the server can run without: a backend of these that is unavailable is logged and skipped.
OPTIONAL_KINDS = ("turn",)
