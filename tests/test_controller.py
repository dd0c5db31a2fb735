"""The session controller without sockets: a stateful model of the shell around it.

The state machine plays the shell (it executes the controller's actions and runs simulated turns
that speak, finish on their own or finish after a cancel) and checks, after every input, the
rules the end-to-end property test checks through a WebSocket, plus the per-mode barge-in rules.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from xiaozhi_trio.pipeline.messages import Abort, ListenStart, ListenStop, RecognitionFailed, Transcript, TypedText, WakeWordDetected
from xiaozhi_trio.pipeline.session.controller import (
    Action,
    BargeInOnSpeechStart,
    CancelTurn,
    Controller,
    ControllerError,
    ControllerSettings,
    DeviceGone,
    EndSession,
    ReportTurnEnded,
    SendStt,
    SendTtsStop,
    UserSpeechStarted,
    StartTurn,
    Tick,
    TurnFinished,
    TurnSummary,
)

MODES = ["auto", "manual", "realtime"]
APOLOGY = "Sorry."
TEXTS = st.sampled_from(["", "hello", "what time is it", "你好"])


def _starts(actions: list[Action]) -> list[StartTurn]:
    return [a for a in actions if isinstance(a, StartTurn)]


def _cancels(actions: list[Action]) -> list[CancelTurn]:
    return [a for a in actions if isinstance(a, CancelTurn)]


class ControllerMachine(RuleBasedStateMachine):
    """The controller and a faithful model of the shell that executes its actions."""

    @initialize(
        barge_in_modes=st.lists(st.sampled_from(MODES), unique=True).map(tuple),
        idle_timeout=st.sampled_from([0.0, 30.0]),
        goodbye=st.sampled_from(["", "Goodbye."]),
        greeting=st.sampled_from(["", "I'm listening."]),
    )
    def start(self, barge_in_modes: tuple[str, ...], idle_timeout: float, goodbye: str, greeting: str) -> None:
        self.settings = ControllerSettings(
            barge_in=BargeInOnSpeechStart(barge_in_modes),
            idle_timeout=idle_timeout,
            goodbye_text=goodbye,
            apology_text=APOLOGY,
            wake_word_greeting=greeting,
        )
        self.controller = Controller(self.settings, now=0.0)
        self.now = 0.0
        self.last_activity = 0.0
        self.mode: str | None = None
        # The shell's view.
        self.live: int | None = None
        self.started: list[StartTurn] = []
        self.cancelled: set[int] = set()
        self.speaking: set[int] = set()  # turns whose tts start went out
        self.stopped: list[int] = []
        self.reported: list[int] = []
        self.finishing: int | None = None  # the turn whose TurnFinished is being handled
        # What the user is owed: the request to start once the live turn has finished.
        self.owed: tuple[str | None, str | None] | None = None
        self.closing = False
        self.ended = False
        # A wake word was just greeted: the listen start that follows it keeps the greeting.
        self.greeting_awaits_listen = False

    # ----------------------------------------------------------------------------------------
    # The shell: execute actions, checking each against the protocol's rules
    # ----------------------------------------------------------------------------------------

    def feed(self, event: object) -> list[Action]:
        if not isinstance(event, (TurnFinished, Tick, ListenStart)):
            self.greeting_awaits_listen = False
        actions = self.controller.handle(event)  # type: ignore[arg-type]
        for action in actions:
            assert not self.ended, f"{action} after the session ended"
            match action:
                case StartTurn(number=number):
                    assert self.live is None, f"turn {number} started while turn {self.live} runs"
                    assert number == len(self.started) + 1, "turns are numbered 1, 2, 3... without gaps"
                    self.started.append(action)
                    self.live = number
                case CancelTurn(number=number):
                    assert number == self.live, "only the live turn is cancelled"
                    assert number not in self.cancelled, "a turn is cancelled once"
                    self.cancelled.add(number)
                case SendTtsStop(number=number):
                    assert number == self.finishing, "tts stop only once the turn's nursery has exited"
                    assert number in self.speaking, "tts stop only after a tts start"
                    assert number not in self.stopped, "one tts stop per tts start"
                    self.stopped.append(number)
                case ReportTurnEnded(summary=summary):
                    assert summary.number == self.finishing and summary.number not in self.reported
                    self.reported.append(summary.number)
                case EndSession():
                    assert self.live is None, "the session ends with no turn running"
                    self.ended = True
                case SendStt():
                    pass
        return actions

    def expect_interrupt(self, actions: list[Action], live_before: int | None, cancelled_before: bool) -> None:
        """The live turn (if not cancelled already) is cancelled, and no turn starts."""
        if live_before is not None and not cancelled_before:
            assert _cancels(actions) == [CancelTurn(live_before, _cancels(actions)[0].reason)]
        else:
            assert _cancels(actions) == []
        self.owed = None

    def expect_request(self, actions: list[Action], user_text: str | None, fixed_reply: str | None, live_before: int | None) -> None:
        """A turn answering this starts now, or is owed once the live turn has finished."""
        if self.closing:
            # No new turn while closing; whether the live one is cancelled is expect_interrupt's.
            assert _starts(actions) == []
            return
        if live_before is None:
            (start,) = _starts(actions)
            assert (start.user_text, start.fixed_reply) == (user_text, fixed_reply)
        else:
            assert _starts(actions) == [], "no turn starts before the live one has finished"
            assert self.live in self.cancelled, "the live turn is cancelled to answer the newer request"
            self.owed = (user_text, fixed_reply)

    def _before(self) -> tuple[int | None, bool]:
        return self.live, self.live in self.cancelled

    # ----------------------------------------------------------------------------------------
    # Device and recognizer inputs
    # ----------------------------------------------------------------------------------------

    @precondition(lambda self: not self.ended)
    @rule(mode=st.sampled_from(MODES))
    def listen_start(self, mode: str) -> None:
        live, cancelled = self._before()
        self.mode = mode
        keeps_greeting, self.greeting_awaits_listen = self.greeting_awaits_listen, False
        actions = self.feed(ListenStart(mode))
        if keeps_greeting:
            assert actions == [], "the firmware's listen start after its wake word keeps the greeting"
        else:
            self.expect_interrupt(actions, live, cancelled)
        assert _starts(actions) == []

    @precondition(lambda self: not self.ended)
    @rule()
    def listen_stop(self) -> None:
        self.mode = None
        assert self.feed(ListenStop()) == []

    @precondition(lambda self: not self.ended)
    @rule(text=st.sampled_from(["", "你好小智"]))
    def wake_word(self, text: str) -> None:
        live, cancelled = self._before()
        actions = self.feed(WakeWordDetected(text))
        self.expect_interrupt(actions, live, cancelled)
        if self.settings.wake_word_greeting:
            self.expect_request(actions, None, self.settings.wake_word_greeting, live)
            self.greeting_awaits_listen = not self.closing
        else:
            assert _starts(actions) == []

    @precondition(lambda self: not self.ended)
    @rule()
    def abort(self) -> None:
        live, cancelled = self._before()
        actions = self.feed(Abort())
        self.expect_interrupt(actions, live, cancelled)
        assert _starts(actions) == []

    @precondition(lambda self: not self.ended and self.mode is not None)
    @rule()
    def speech_starts(self) -> None:
        assert self.mode is not None
        live, cancelled = self._before()
        self.last_activity = self.now
        actions = self.feed(UserSpeechStarted(self.mode, self.now))
        barges_in = self.mode != "manual" and self.mode in self.settings.barge_in.modes  # type: ignore[attr-defined]
        if self.mode == "manual":
            assert actions == [], "push-to-talk never barges in"
        if barges_in and live is not None:
            self.expect_interrupt(actions, live, cancelled)
        else:
            assert actions == [], "speech interrupts only in the barge-in modes"

    @precondition(lambda self: not self.ended)
    @rule(text=TEXTS)
    def transcript(self, text: str) -> None:
        live, _ = self._before()
        self.last_activity = self.now
        actions = self.feed(Transcript(text, self.now))
        if not text or self.closing:
            assert actions == []
            return
        assert actions[0] == SendStt(text)
        self.expect_request(actions, text, None, live)

    @precondition(lambda self: not self.ended)
    @rule(text=TEXTS.filter(bool))
    def typed_text(self, text: str) -> None:
        live, _ = self._before()
        actions = self.feed(TypedText(text))
        if self.closing:
            assert actions == []
            return
        assert actions[0] == SendStt(text)
        self.expect_request(actions, text, None, live)

    @precondition(lambda self: not self.ended)
    @rule()
    def recognition_fails(self) -> None:
        live, _ = self._before()
        actions = self.feed(RecognitionFailed("asr", "model crashed"))
        self.expect_request(actions, None, APOLOGY, live)

    @precondition(lambda self: not self.ended)
    @rule()
    def device_goes_away(self) -> None:
        live, cancelled = self._before()
        self.closing = True
        actions = self.feed(DeviceGone())
        self.expect_interrupt(actions, live, cancelled)
        assert self.ended == (live is None)

    # ----------------------------------------------------------------------------------------
    # The turns and the clock
    # ----------------------------------------------------------------------------------------

    @precondition(lambda self: self.live is not None and self.live not in self.cancelled)
    @rule()
    def turn_starts_speaking(self) -> None:
        assert self.live is not None
        self.speaking.add(self.live)

    @precondition(lambda self: self.live is not None)
    @rule(failed=st.booleans(), finished_before_the_cancel=st.booleans(), dt=st.sampled_from([0.0, 0.5, 4.0]))
    def turn_finishes(self, failed: bool, finished_before_the_cancel: bool, dt: float) -> None:
        assert self.live is not None
        number = self.live
        self.now += dt
        # A cancelled turn's scope caught the cancel, unless it had already finished on its own.
        interrupted = number in self.cancelled and not finished_before_the_cancel
        summary = TurnSummary(number, tts_started=number in self.speaking, interrupted=interrupted, failed=failed)
        self.live, self.finishing = None, number
        owed, self.owed = self.owed, None
        actions = self.feed(TurnFinished(summary, self.now))
        self.finishing = None
        self.last_activity = self.now
        assert actions[0] == ReportTurnEnded(summary)
        assert (SendTtsStop(number) in actions) == (number in self.speaking), "tts stop once per started tts"
        if self.closing:
            assert actions[-1] == EndSession("idle timeout") or actions[-1] == EndSession("device disconnected")
        elif owed is not None:
            (start,) = _starts(actions)
            assert (start.user_text, start.fixed_reply) == owed, "the newer request is answered next"
            assert actions.index(start) > actions.index(ReportTurnEnded(summary))
        else:
            assert _starts(actions) == []

    @precondition(lambda self: not self.ended)
    @rule(dt=st.sampled_from([0.5, 10.0, 29.0, 45.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        deadline = self.model_deadline()
        actions = self.feed(Tick(self.now))
        if deadline is None or self.now < deadline:
            assert actions == []
            return
        self.closing = True
        if self.settings.goodbye_text:
            assert [(s.user_text, s.fixed_reply) for s in _starts(actions)] == [(None, self.settings.goodbye_text)]
        else:
            assert actions == [EndSession("idle timeout")]

    @precondition(lambda self: self.ended)
    @rule()
    def nothing_after_the_end(self) -> None:
        assert self.controller.handle(Transcript("hello", self.now)) == []
        assert self.controller.handle(Tick(self.now + 1000)) == []

    def model_deadline(self) -> float | None:
        if self.settings.idle_timeout <= 0 or self.closing or self.live is not None:
            return None
        return self.last_activity + self.settings.idle_timeout

    # ----------------------------------------------------------------------------------------

    @invariant()
    def at_most_one_turn_runs(self) -> None:
        if hasattr(self, "controller"):
            assert self.controller.live_turn == self.live
            assert self.controller.turns_started == len(self.started)

    @invariant()
    def the_idle_deadline_follows_activity(self) -> None:
        if hasattr(self, "controller") and not self.ended:
            assert self.controller.idle_deadline == self.model_deadline()

    @invariant()
    def every_finished_turn_was_reported_and_stopped(self) -> None:
        if hasattr(self, "controller"):
            finished = [s.number for s in self.started if s.number != self.live]
            assert self.reported == finished
            assert self.stopped == [n for n in finished if n in self.speaking]


ControllerMachine.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None)
test_controller_keeps_the_session_rules = ControllerMachine.TestCase


# --------------------------------------------------------------------------------------------
# Examples of single rules
# --------------------------------------------------------------------------------------------


def _summary(number: int, *, tts: bool = True, interrupted: bool = False, failed: bool = False) -> TurnSummary:
    return TurnSummary(number, tts_started=tts, interrupted=interrupted, failed=failed)


def test_outcome_is_interrupted_then_failed_then_completed():
    assert _summary(1, interrupted=True, failed=True).outcome == "interrupted"
    assert _summary(1, failed=True).outcome == "failed"
    assert _summary(1).outcome == "completed"


def test_a_question_during_a_reply_waits_for_its_tts_stop():
    controller = Controller(ControllerSettings(), now=0)
    assert controller.handle(Transcript("one", 1.0)) == [SendStt("one"), StartTurn(1, user_text="one")]
    assert controller.handle(Transcript("two", 2.0)) == [SendStt("two"), CancelTurn(1, "replaced by a new turn")]
    assert controller.handle(Transcript("three", 2.5)) == [SendStt("three")]  # the newest question wins
    finished = _summary(1, interrupted=True)
    assert controller.handle(TurnFinished(finished, 3.0)) == [
        ReportTurnEnded(finished),
        SendTtsStop(1),
        StartTurn(2, user_text="three"),
    ]


def test_idle_goodbye_then_the_end():
    controller = Controller(ControllerSettings(idle_timeout=60, goodbye_text="Bye."), now=0)
    assert controller.idle_deadline == 60
    assert controller.handle(Tick(59.9)) == []
    assert controller.handle(Tick(60)) == [StartTurn(1, fixed_reply="Bye.")]
    assert controller.handle(Transcript("wait", 61)) == []  # closing: no new turns
    done = _summary(1)
    assert controller.handle(TurnFinished(done, 63)) == [ReportTurnEnded(done), SendTtsStop(1), EndSession("idle timeout")]


def test_speech_postpones_the_idle_deadline():
    controller = Controller(ControllerSettings(idle_timeout=60), now=0)
    controller.handle(UserSpeechStarted("auto", 50))
    assert controller.idle_deadline == 110
    assert controller.handle(Tick(100)) == []


def test_the_listen_start_after_a_wake_word_keeps_the_greeting_but_a_later_one_does_not():
    controller = Controller(ControllerSettings(wake_word_greeting="Yes?"), now=0)
    assert controller.handle(WakeWordDetected("你好小智")) == [StartTurn(1, fixed_reply="Yes?")]
    assert controller.handle(ListenStart("auto")) == []  # the firmware's own sequence
    assert controller.handle(ListenStart("manual")) == [CancelTurn(1, "listening again")]


def test_any_input_between_the_wake_word_and_listen_start_ends_the_exemption():
    controller = Controller(ControllerSettings(wake_word_greeting="Yes?"), now=0)
    controller.handle(WakeWordDetected(""))
    controller.handle(ListenStop())
    assert controller.handle(ListenStart("auto")) == [CancelTurn(1, "listening again")]


@pytest.mark.parametrize("greeting, expected", [("Yes?", [StartTurn(1, fixed_reply="Yes?")]), ("", [])])
def test_wake_word_greets_when_configured(greeting, expected):
    controller = Controller(ControllerSettings(wake_word_greeting=greeting), now=0)
    assert controller.handle(WakeWordDetected("你好小智")) == expected


def test_typed_text_is_shown_and_answered():
    controller = Controller(ControllerSettings(), now=0)
    assert controller.handle(TypedText("what is two plus two")) == [SendStt("what is two plus two"), StartTurn(1, user_text="what is two plus two")]


@pytest.mark.parametrize("mode, interrupts", [("realtime", True), ("auto", False), ("manual", False)])
def test_barge_in_by_mode(mode, interrupts):
    controller = Controller(ControllerSettings(barge_in=BargeInOnSpeechStart(("realtime", "manual"))), now=0)
    controller.handle(TypedText("tell me a story"))
    actions = controller.handle(UserSpeechStarted(mode, 1.0))
    assert actions == ([CancelTurn(1, "barge-in")] if interrupts else [])


def test_a_finish_for_a_turn_that_is_not_live_is_a_shell_bug():
    controller = Controller(ControllerSettings(), now=0)
    with pytest.raises(ControllerError, match="turn 3 finished but the live turn is None"):
        controller.handle(TurnFinished(_summary(3), 1.0))


def test_a_turn_is_either_an_answer_or_a_fixed_reply():
    with pytest.raises(ValueError, match="exactly one"):
        StartTurn(1)
    with pytest.raises(ValueError, match="exactly one"):
        StartTurn(1, user_text="a", fixed_reply="b")


class BackchannelsKeepTheReply(BargeInOnSpeechStart):
    """A policy that hears "uh-huh" as a backchannel (what a turn detector would decide)."""

    def replaces_reply(self, transcript: Transcript) -> bool:
        return transcript.text != "uh-huh"


def test_a_backchannel_policy_keeps_the_reply_and_loses_no_turn():
    controller = Controller(ControllerSettings(barge_in=BackchannelsKeepTheReply(modes=())), now=0)
    controller.handle(TypedText("tell me a story"))
    assert controller.handle(UserSpeechStarted("realtime", 1.0)) == []
    assert controller.handle(Transcript("uh-huh", 1.5)) == []
    assert controller.live_turn == 1
    assert controller.handle(Transcript("stop please", 3.0)) == [SendStt("stop please"), CancelTurn(1, "replaced by a new turn")]
