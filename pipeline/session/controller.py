"""The session's rules as a sans-IO state machine: what a conversation does next.

No trio, no sockets, no clock of its own. The session shell feeds ``Controller.handle`` one input
at a time (what the device said, what the recognizer heard, that a turn finished, what time it is)
and executes the actions it returns, in order::

    inputs:  ListenStart  ListenStop  WakeWordDetected  Abort  TypedText  UserSpeechStarted
             UserSpeechProgress  Transcript  RecognitionFailed  TurnFinished  Tick  DeviceGone
    actions: SendStt  StartTurn  CancelTurn  SendTtsStop  ReportTurnEnded  EndSession

The controller owns turn numbering, which turn is live, each turn's outcome and the idle deadline.
Turns never overlap: to answer while a turn is live it sends ``CancelTurn`` and keeps the new
request pending until that turn's ``TurnFinished`` arrives; only then come its report, its
``tts stop`` (when it had started speaking) and the pending ``StartTurn``. So the shell never waits inside an
action, and everything a turn sent is out before anything of the next one.

The listen mode is not kept here: the utterance detector owns it (it is the one place that sees it
in order with the audio), and every ``UserSpeechStarted`` says in which mode it was heard.

Whether the user's speech interrupts a reply is one policy object, ``BargeIn``: replace it to
decide on more than the start of speech (voiced seconds, words heard so far, backchannels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import SessionConfig
from ..messages import Abort, ListenStart, ListenStop, PcmChunk, RecognitionFailed, Transcript, TypedText, WakeWordDetected

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


# ``ListenStart``, ``ListenStop``, ``WakeWordDetected``, ``Abort``, ``TypedText``, ``Transcript``
# and ``RecognitionFailed`` come as they are from ``messages``; the rest are the controller's own.


@dataclass(frozen=True, slots=True)
class UserSpeechStarted:
    """The user started speaking, heard while listening in ``mode``, at trio time ``at``."""

    mode: str
    at: float


@dataclass(frozen=True, slots=True)
class UserSpeechProgress:
    """The user's utterance in progress, heard in ``mode``: ``seconds`` long so far, and the
    ``words`` a streaming recognizer has heard (None: none known)."""

    mode: str
    seconds: float
    words: str | None = None


@dataclass(frozen=True, slots=True)
class TurnSummary:
    """What one turn did, as it reports itself when its nursery has exited."""

    number: int
    #: ``tts start`` went out, so ``tts stop`` must follow.
    tts_started: bool
    #: Cut short: its scope was cancelled (abort, barge-in, a newer question...) or the
    #: connection failed under it.
    interrupted: bool
    #: A backend failed or the turn raised (the user heard an apology or a part of the reply).
    failed: bool
    sentences: int = 0
    audio_seconds: float = 0.0

    @property
    def outcome(self) -> str:
        """``"interrupted"``, ``"failed"`` or ``"completed"``: decided here and nowhere else."""
        if self.interrupted:
            return "interrupted"
        return "failed" if self.failed else "completed"


@dataclass(frozen=True, slots=True)
class TurnFinished:
    """A turn's nursery has exited (nothing of it can reach the device any more)."""

    summary: TurnSummary
    at: float


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock reached ``now`` (the shell sends one when ``idle_deadline`` passes)."""

    now: float


@dataclass(frozen=True, slots=True)
class DeviceGone:
    """The connection is closed: stop the live turn and end."""


ControllerInput = (
    ListenStart
    | ListenStop
    | WakeWordDetected
    | Abort
    | UserSpeechStarted
    | UserSpeechProgress
    | Transcript
    | RecognitionFailed
    | TypedText
    | TurnFinished
    | Tick
    | DeviceGone
)

# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendStt:
    """Show the user's words on the device (the ``stt`` message)."""

    text: str


@dataclass(frozen=True, slots=True)
class StartTurn:
    """Start turn ``number``: answer ``user_text`` through the agent, or speak ``fixed_reply``."""

    number: int
    user_text: str | None = None
    fixed_reply: str | None = None
    utterance: PcmChunk | None = None

    def __post_init__(self) -> None:
        if (self.user_text is None) == (self.fixed_reply is None):
            raise ValueError("a turn answers user text or speaks a fixed reply, exactly one")


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Cancel turn ``number``'s scope; its ``TurnFinished`` follows."""

    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendTtsStop:
    """Send ``tts stop`` for turn ``number`` (its audio is all out)."""

    number: int


@dataclass(frozen=True, slots=True)
class ReportTurnEnded:
    """Tell observers how a turn ended (``summary.outcome``)."""

    summary: TurnSummary


@dataclass(frozen=True, slots=True)
class EndSession:
    """Close the session (after any goodbye was spoken)."""

    reason: str


Action = SendStt | StartTurn | CancelTurn | SendTtsStop | ReportTurnEnded | EndSession

# --------------------------------------------------------------------------------------------
# Barge-in
# --------------------------------------------------------------------------------------------


class BargeIn(Protocol):
    """Decides whether the user's speech interrupts a live reply.

    A richer rule (voiced seconds, words so far, backchannels) is a policy of its own: add an
    input such as ``UserSpeechProgress(mode, voiced_seconds, words)`` to ``ControllerInput`` and a
    method for it here; the rest of the controller does not change.
    """

    def interrupts(self, speech: UserSpeechStarted) -> bool:
        """True: cancel the reply now. False: let it play (the transcript may still replace it)."""
        ...

    def interrupts_later(self, progress: UserSpeechProgress) -> bool:
        """The speech that did not interrupt at its start has grown: cancel the reply now?"""
        ...

    def replaces_reply(self, transcript: Transcript) -> bool:
        """A transcript arrived while a reply plays on (not cancelled). True: answer it, replacing
        the reply. False: it was a backchannel ("uh-huh"); the reply goes on, nothing is lost."""
        ...


@dataclass(frozen=True)
class BargeInOnSpeechStart:
    """Any speech that starts in one of ``modes`` interrupts; push-to-talk (``manual``) never
    does, whatever the configuration says: there the button decides. Every transcript is an
    answerable question."""

    modes: tuple[str, ...] = ("realtime",)

    def interrupts(self, speech: UserSpeechStarted) -> bool:
        return speech.mode != "manual" and speech.mode in self.modes

    def interrupts_later(self, progress: UserSpeechProgress) -> bool:
        return False  # whatever interrupts did so at the start

    def replaces_reply(self, transcript: Transcript) -> bool:
        return True


# --------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerSettings:
    """The rules' parameters (``ControllerSettings.from_config``: from ``[session]``)."""

    barge_in: BargeIn = BargeInOnSpeechStart()
    #: Seconds without user activity before the goodbye; 0 = never.
    idle_timeout: float = 300.0
    #: Spoken before an idle close; empty: close without speaking.
    goodbye_text: str = ""
    #: Spoken when the recognizer fails.
    apology_text: str = "Sorry, something went wrong."
    #: Spoken on a wake word; empty: a wake word only interrupts.
    wake_word_greeting: str = ""

    @classmethod
    def from_config(cls, session: SessionConfig) -> ControllerSettings:
        # Imported here: the noise rule's module builds on this one's input types.
        from .interruptions import BACKCHANNELS, BargeInIgnoringNoise, InterruptionRule, normalize

        barge_in: BargeIn = BargeInOnSpeechStart(session.barge_in_modes)
        if session.barge_in_ignores_noise:
            rule = InterruptionRule(
                min_voiced_seconds=session.barge_in_min_voiced_ms / 1000,
                min_words=session.barge_in_min_words,
                backchannels=BACKCHANNELS | {normalize(word) for word in session.backchannels},
            )
            barge_in = BargeInIgnoringNoise(session.barge_in_modes, rule)
        return cls(
            barge_in=barge_in,
            idle_timeout=session.idle_timeout,
            goodbye_text=session.goodbye_text,
            apology_text=session.apology_text,
            wake_word_greeting=session.wake_word_greeting,
        )


@dataclass(frozen=True, slots=True)
class _Request:
    """A turn waiting to start."""

    user_text: str | None = None
    fixed_reply: str | None = None
    utterance: PcmChunk | None = None


class ControllerError(Exception):
    """An input that cannot happen in the controller's state (a bug in the shell)."""


class Controller:
    """The rules of one session. ``handle`` an input, execute the returned actions in order."""

    def __init__(self, settings: ControllerSettings, *, now: float) -> None:
        self.settings = settings
        #: Turns numbered so far (the next turn is ``turns_started + 1``).
        self.turns_started = 0
        #: The turn started and not yet finished, if any.
        self.live_turn: int | None = None
        self._cancel_sent = False
        self._pending: _Request | None = None
        #: A wake word was just greeted: the firmware's own ``listen start`` that follows it must
        #: not cancel the greeting (any other input in between ends this).
        self._greeting_awaits_listen = False
        self._last_activity = now
        #: Why the session is ending, once it is (no new turns from then on).
        self.closing: str | None = None
        self.ended = False

    @property
    def idle_deadline(self) -> float | None:
        """Trio time at which the session idles out, or None while anything is going on."""
        if self.settings.idle_timeout <= 0 or self.closing is not None or self.ended:
            return None
        if self.live_turn is not None or self._pending is not None:
            return None
        return self._last_activity + self.settings.idle_timeout

    def handle(self, event: ControllerInput) -> list[Action]:
        """Take one input; return what the shell must do now, in order."""
        if self.ended:
            return []
        greeting_awaits_listen = self._greeting_awaits_listen
        if not isinstance(event, (TurnFinished, Tick)):
            self._greeting_awaits_listen = False
        match event:
            case ListenStart():
                if greeting_awaits_listen:
                    return []  # the device listens while it is greeted, as after any wake word
                return self._interrupt("listening again")
            case ListenStop():
                return []
            case WakeWordDetected():
                actions = self._interrupt("wake word")
                if self.settings.wake_word_greeting and self.closing is None:
                    actions += self._request(_Request(fixed_reply=self.settings.wake_word_greeting))
                    self._greeting_awaits_listen = True
                return actions
            case Abort():
                return self._interrupt("abort")
            case UserSpeechStarted(at=at):
                self._last_activity = max(self._last_activity, at)
                if self.live_turn is not None and self.settings.barge_in.interrupts(event):
                    return self._interrupt("barge-in")
                return []
            case UserSpeechProgress():
                if self.live_turn is not None and not self._cancel_sent and self.settings.barge_in.interrupts_later(event):
                    return self._interrupt("barge-in")
                return []
            case Transcript(text=text, speech_ended_at=at, audio=utterance):
                self._last_activity = max(self._last_activity, at)
                if not text or self.closing is not None:
                    return []
                if self.live_turn is not None and not self._cancel_sent and not self.settings.barge_in.replaces_reply(event):
                    return []  # a backchannel: the reply goes on
                return [SendStt(text), *self._request(_Request(user_text=text, utterance=utterance))]
            case RecognitionFailed():
                return self._request(_Request(fixed_reply=self.settings.apology_text))
            case TypedText(text=text):
                if self.closing is not None:
                    return []
                return [SendStt(text), *self._request(_Request(user_text=text))]
            case TurnFinished():
                return self._finished(event)
            case Tick(now=now):
                deadline = self.idle_deadline
                if deadline is None or now < deadline:
                    return []
                self.closing = "idle timeout"
                if self.settings.goodbye_text:
                    return self._start(_Request(fixed_reply=self.settings.goodbye_text))
                return self._end()
            case DeviceGone():
                self.closing = "device disconnected"
                actions = self._interrupt("disconnected")
                return actions if self.live_turn is not None else actions + self._end()
        raise ControllerError(f"not a controller input: {event!r}")

    # ----------------------------------------------------------------------------------------

    def _interrupt(self, reason: str) -> list[Action]:
        """Drop any pending turn and cancel the live one."""
        self._pending = None
        if self.live_turn is None or self._cancel_sent:
            return []
        self._cancel_sent = True
        return [CancelTurn(self.live_turn, reason)]

    def _request(self, request: _Request) -> list[Action]:
        """Start a turn now, or once the live one has finished (a newer request replaces it)."""
        if self.closing is not None:
            return []
        if self.live_turn is None:
            return self._start(request)
        actions = self._interrupt("replaced by a new turn")
        self._pending = request
        return actions

    def _start(self, request: _Request) -> list[Action]:
        self.turns_started += 1
        self.live_turn = self.turns_started
        self._cancel_sent = False
        return [StartTurn(self.turns_started, request.user_text, request.fixed_reply, request.utterance)]

    def _finished(self, event: TurnFinished) -> list[Action]:
        summary = event.summary
        if summary.number != self.live_turn:
            raise ControllerError(f"turn {summary.number} finished but the live turn is {self.live_turn}")
        self.live_turn = None
        self._cancel_sent = False
        self._last_activity = max(self._last_activity, event.at)
        actions: list[Action] = [ReportTurnEnded(summary)]
        if summary.tts_started:
            actions.append(SendTtsStop(summary.number))
        if self.closing is not None:
            return actions + self._end()
        if self._pending is not None:
            request, self._pending = self._pending, None
            actions += self._start(request)
        return actions

    def _end(self) -> list[Action]:
        self.ended = True
        self._pending = None
        return [EndSession(self.closing or "ended")]
