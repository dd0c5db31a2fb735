"""When does a pause end the user's turn? A sans-IO state machine around a turn detector.

The VAD reports short pauses (``pause`` seconds of silence, ~200 ms). At each one the policy asks
the detector for the probability that the user has finished. How sure it must be depends on how
long the user has been silent (``schedule``): very sure to answer at once (0.93), less once the
silence is long (0.5 from 1 s), since a long silence is itself a sign that the user is done.
The answer is kept as a deadline: the turn ends at the silence where the schedule falls to the
probability (at once if it already has), or at ``max_silence`` whatever the detector said. With
``recheck`` the detector is asked again each time the pause has grown by that much, and its newest
answer sets the deadline; 0 asks once per pause.

Speech before the turn ends resumes the same utterance and forgets the deadline. Answers to an
older question (asked before the user spoke again, or before the turn ended) are ignored, so they
can never end a later pause or a later turn.

The policy never sees audio or a clock: its owner reports speech, the silence so far and the
detector's answers, and carries out the actions it returns (``Ask``, ``EndTurn``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ..config import TurnPolicyConfig

#: (silence in seconds, probability of "finished" that ends the turn from that silence on), in order.
Schedule = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class TurnTiming:
    """The policy's settings, in seconds (``[turn]`` in the config has them in ms).

    ``schedule``: the probability needed from each point's silence on (the first point's before
    it); it may only fall as the silence grows.
    """

    pause: float = 0.2
    max_silence: float = 1.6
    recheck: float = 0.0
    schedule: Schedule = ((0.2, 0.93), (1.0, 0.5))

    @classmethod
    def from_config(cls, config: TurnPolicyConfig) -> TurnTiming:
        schedule = tuple((ms / 1000, probability) for ms, probability in config.threshold_schedule)
        return cls(config.pause_ms / 1000, config.max_silence_ms / 1000, config.recheck_ms / 1000, schedule)

    @classmethod
    def constant(cls, threshold: float, **kwargs: float) -> TurnTiming:
        """One threshold at every silence."""
        return cls(schedule=((0.0, threshold),), **kwargs)

    def __post_init__(self) -> None:
        points = self.schedule
        if (
            not 0 < self.pause <= self.max_silence
            or self.recheck < 0
            or not points
            or any(not 0 < p <= 1 or s < 0 for s, p in points)
            or any(s2 <= s1 or p2 > p1 for (s1, p1), (s2, p2) in zip(points, points[1:]))
        ):
            raise ValueError(f"inconsistent turn timing {self}")

    def threshold(self, silence: float) -> float:
        """The probability of "finished" that ends the turn after ``silence`` seconds."""
        value = self.schedule[0][1]
        for at, probability in self.schedule:
            if silence >= at:
                value = probability
        return value

    def deadline(self, asked_at: float, probability: float) -> float:
        """The first silence from ``asked_at`` on at which ``probability`` ends the turn (inf:
        never, only ``max_silence`` will)."""
        if probability >= self.threshold(asked_at):
            return asked_at
        return next((at for at, needed in self.schedule if at > asked_at and probability >= needed), math.inf)


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
    """Utterance ``utterance`` is over: ``"detector"`` said so (its answer's deadline came), the
    ``"silence"`` was too long, or it was ``"forced"``."""

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
        self._asked_at = 0.0  # the silence when the pending question was asked
        self._deadline = math.inf  # the silence at which the last answer ends the turn
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
        self._deadline = math.inf
        self._silence = 0.0
        return []

    def silence(self, seconds: float) -> list[Action]:
        """The user has been silent for ``seconds`` since the utterance's last speech."""
        if self.phase is Phase.IDLE:
            return []
        self.phase = Phase.PAUSED
        self._silence = max(self._silence, seconds)
        if self._silence >= min(self._deadline, self.timing.max_silence):
            return [self._end("detector" if self._deadline <= self.timing.max_silence else "silence")]
        if self._pending is None and self._silence >= self._next_ask_at:
            self._asks += 1
            self._pending = self._asks
            self._asked_at = self._silence
            # recheck 0: this pause has had its question.
            self._next_ask_at = self._silence + self.timing.recheck if self.timing.recheck else math.inf
            return [Ask(self._asks, self.utterance)]
        return []

    def answer(self, ask: int, probability: float) -> list[Action]:
        """The detector's answer to question ``ask``: the probability that the turn is over."""
        if ask != self._pending or self.phase is not Phase.PAUSED:
            return []  # stale: the user spoke again, or the turn already ended
        self._pending = None
        self._deadline = self.timing.deadline(self._asked_at, probability)
        if self._silence >= self._deadline:
            return [self._end("detector")]
        return []

    def failed(self, ask: int) -> list[Action]:
        """The detector could not answer ``ask``: the deadline stays as it was (none, or an earlier
        answer's); wait for it, the next question or the silence limit."""
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
        self._deadline = math.inf
        self._silence = 0.0

    def _end(self, reason: str) -> EndTurn:
        self.phase = Phase.IDLE
        self._pending = None
        self._deadline = math.inf
        self._silence = 0.0
        return EndTurn(self.utterance, reason)
