"""When does a pause end the user's turn? A sans-IO state machine around a turn detector.

The VAD reports short pauses (``pause`` seconds of silence, ~200 ms). At each one the policy asks
the detector whether the user has finished; "finished" ends the turn at once, "not finished"
keeps listening, asking again each time the pause has grown by ``recheck`` seconds, until
``max_silence`` ends the turn whatever the detector thinks. Speech before that resumes the same
utterance. Answers to an older question (asked before the user spoke again, or before the turn
ended) are ignored, so they can never end a later pause or a later turn.

The policy never sees audio or a clock: its owner reports speech, the silence so far and the
detector's answers, and carries out the actions it returns (``Ask``, ``EndTurn``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config import TurnPolicyConfig


@dataclass(frozen=True)
class TurnTiming:
    """The policy's settings, in seconds (``[turn]`` in the config has them in ms)."""

    pause: float = 0.2
    max_silence: float = 1.6
    recheck: float = 0.4
    threshold: float = 0.8

    @classmethod
    def from_config(cls, config: TurnPolicyConfig) -> TurnTiming:
        return cls(config.pause_ms / 1000, config.max_silence_ms / 1000, config.recheck_ms / 1000, config.threshold)

    def __post_init__(self) -> None:
        if not 0 < self.pause <= self.max_silence or self.recheck <= 0 or not 0 < self.threshold < 1:
            raise ValueError(f"inconsistent turn timing {self}")


class Phase(enum.Enum):
    IDLE = "idle"  # no utterance in progress
    SPEAKING = "speaking"
    PAUSED = "paused"  # an utterance in progress, the user silent for a while


@dataclass(frozen=True)
class Ask:
    """Ask the detector about utterance ``utterance`` as it is now; answer with ``ask``."""

    ask: int
    utterance: int


@dataclass(frozen=True)
class EndTurn:
    """Utterance ``utterance`` is over: ``"detector"`` said so, or the ``"silence"`` was too long."""

    utterance: int
    reason: str


Action = Ask | EndTurn


class TurnPolicy:
    """One session's turn decisions (see the module doc)."""

    def __init__(self, timing: TurnTiming) -> None:
        self.timing = timing
        self.phase = Phase.IDLE
        #: Utterances started so far; the current one's number while one is in progress.
        self.utterance = 0
        self._asks = 0
        self._pending: int | None = None  # the question waiting for its answer
        self._next_ask_at = timing.pause  # silence at which the next question is due
        self._silence = 0.0

    @property
    def pending(self) -> int | None:
        """The question the policy waits an answer to, if any."""
        return self._pending

    def speech(self) -> list[Action]:
        """The user is speaking: a new utterance, or the paused one goes on."""
        if self.phase is Phase.IDLE:
            self.utterance += 1
        self.phase = Phase.SPEAKING
        self._pending = None  # an answer about the shorter utterance no longer counts
        self._next_ask_at = self.timing.pause
        self._silence = 0.0
        return []

    def silence(self, seconds: float) -> list[Action]:
        """The user has been silent for ``seconds`` since the utterance's last speech."""
        if self.phase is Phase.IDLE:
            return []
        self.phase = Phase.PAUSED
        self._silence = max(self._silence, seconds)
        if self._silence >= self.timing.max_silence:
            return [self._end("silence")]
        if self._pending is None and self._silence >= self._next_ask_at:
            self._asks += 1
            self._pending = self._asks
            self._next_ask_at = self._silence + self.timing.recheck
            return [Ask(self._asks, self.utterance)]
        return []

    def answer(self, ask: int, probability: float) -> list[Action]:
        """The detector's answer to question ``ask``: the probability that the turn is over."""
        if ask != self._pending or self.phase is not Phase.PAUSED:
            return []  # stale: the user spoke again, or the turn already ended
        self._pending = None
        if probability >= self.timing.threshold:
            return [self._end("detector")]
        return []

    def failed(self, ask: int) -> list[Action]:
        """The detector could not answer ``ask``: wait for the next question or the silence limit."""
        if ask == self._pending:
            self._pending = None
        return []

    def end(self) -> list[Action]:
        """End the utterance in progress now (the listen state changed, or it grew too long)."""
        return [self._end("forced")] if self.phase is not Phase.IDLE else []

    def reset(self) -> None:
        """Forget the utterance in progress without ending it (the device stopped listening)."""
        self.phase = Phase.IDLE
        self._pending = None
        self._silence = 0.0

    def _end(self, reason: str) -> EndTurn:
        self.phase = Phase.IDLE
        self._pending = None
        self._silence = 0.0
        return EndTurn(self.utterance, reason)
