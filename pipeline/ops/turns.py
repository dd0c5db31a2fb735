"""Per-stage latencies of a turn, computed from session events (sans-IO).

A turn's path to the first sound: end of speech → transcript → first agent text → first sentence →
first audio packet. Each event carries ``at`` (trio's clock), so each stage is the difference of two
events of the same session and turn. ``TurnTimer.feed(event)`` returns the latencies that event
completes, and a ``TurnSummary`` when the turn ends; metrics and the session log both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..events import (
    FirstAgentText,
    FirstAudio,
    FirstSentence,
    SessionClosed,
    SessionEvent,
    TranscriptReady,
    TurnEnded,
    TurnStarted,
)

#: Stage names, in the order a turn goes through them.
TRANSCRIPT = "speech_end_to_transcript"
FIRST_TEXT = "transcript_to_first_text"
FIRST_SENTENCE = "first_text_to_first_sentence"
FIRST_AUDIO = "first_sentence_to_first_audio"
STAGES = (TRANSCRIPT, FIRST_TEXT, FIRST_SENTENCE, FIRST_AUDIO)
#: The whole path: end of speech → first audio packet (the latency a user hears).
RESPONSE = "speech_end_to_first_audio"


@dataclass(frozen=True, slots=True)
class StageLatency:
    session_id: str
    device_id: str
    stage: str
    seconds: float


@dataclass(frozen=True, slots=True)
class TurnSummary:
    session_id: str
    device_id: str
    turn: int
    outcome: str
    #: Stage name → seconds, for the stages this turn went through.
    stages: dict[str, float]


@dataclass(slots=True)
class _TurnTimes:
    """When each stage of one turn ended (trio time), while the turn is open."""

    speech_end: float | None
    transcript: float | None
    started: float
    first_text: float | None = None
    first_sentence: float | None = None
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Session:
    #: The last transcript not yet claimed by a turn: (speech end, transcript time).
    pending: tuple[float, float] | None = None
    turns: dict[int, _TurnTimes] = field(default_factory=dict)


class TurnTimer:
    """Follows the sessions' events and measures every stage of every turn."""

    #: Turns kept per session at most (a session that never ends its turns cannot grow without bound).
    MAX_OPEN_TURNS = 8

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}

    def feed(self, event: SessionEvent) -> list[StageLatency | TurnSummary]:
        """Take one event; return the stage latencies it completes (and the summary at turn end)."""
        if isinstance(event, SessionClosed):
            self._sessions.pop(event.session_id, None)
            return []
        session = self._sessions.setdefault(event.session_id, _Session())
        out: list[StageLatency | TurnSummary] = []

        def stage(turn: _TurnTimes, name: str, start: float | None) -> None:
            # A missing or later start (a turn begun from text, not speech) measures nothing.
            if start is not None and event.at >= start:
                turn.stages[name] = event.at - start
                out.append(StageLatency(event.session_id, event.device_id, name, event.at - start))

        match event:
            case TranscriptReady():
                session.pending = (event.speech_ended_at, event.at)
                if event.at >= event.speech_ended_at:
                    out.append(StageLatency(event.session_id, event.device_id, TRANSCRIPT, event.at - event.speech_ended_at))
            case TurnStarted():
                speech_end, transcript = session.pending if session.pending else (None, None)
                session.pending = None
                turn = _TurnTimes(speech_end, transcript, event.at)
                if speech_end is not None and transcript is not None and transcript >= speech_end:
                    turn.stages[TRANSCRIPT] = transcript - speech_end
                session.turns[event.turn] = turn
                while len(session.turns) > self.MAX_OPEN_TURNS:
                    session.turns.pop(next(iter(session.turns)))
            case FirstAgentText() if (turn := session.turns.get(event.turn)) and turn.first_text is None:
                turn.first_text = event.at
                stage(turn, FIRST_TEXT, turn.transcript if turn.transcript is not None else turn.started)
            case FirstSentence() if (turn := session.turns.get(event.turn)) and turn.first_sentence is None:
                turn.first_sentence = event.at
                stage(turn, FIRST_SENTENCE, turn.first_text)
            case FirstAudio() if (turn := session.turns.get(event.turn)) and FIRST_AUDIO not in turn.stages:
                stage(turn, FIRST_AUDIO, turn.first_sentence)
                stage(turn, RESPONSE, turn.speech_end)
            case TurnEnded():
                turn = session.turns.pop(event.turn, None)
                stages = dict(turn.stages) if turn else {}
                out.append(TurnSummary(event.session_id, event.device_id, event.turn, event.outcome, stages))
            case _:
                pass
        return out

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)
