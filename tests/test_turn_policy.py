"""The turn policy as a pure state machine, under any timing of pauses and detector answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.stages.turn_policy import Ask, EndTurn, Phase, TurnPolicy, TurnTiming

TIMING = TurnTiming(pause=0.2, max_silence=1.6, recheck=0.4, schedule=((0.0, 0.5),))
#: The default: very sure at the first pause, half sure from 1 s; asked once per pause.
DEFAULT = TurnTiming()
#: Near a schedule's crossing, float rounding may fall either way.
EPS = 1e-9


@st.composite
def timings(draw: st.DrawFn) -> TurnTiming:
    pause = draw(st.floats(min_value=0.05, max_value=0.5))
    max_silence = pause + draw(st.floats(min_value=0.0, max_value=2.0))
    recheck = draw(st.sampled_from([0.0, 0.1, 0.25, 0.4]))
    silences = sorted(draw(st.sets(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=3)))
    probabilities = sorted(draw(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=len(silences), max_size=len(silences))), reverse=True)
    return TurnTiming(pause, max_silence, recheck, tuple(zip(silences, probabilities, strict=True)))


events = st.lists(
    st.one_of(
        st.tuples(st.just("speak")),
        st.tuples(st.just("quiet"), st.floats(min_value=0.0, max_value=0.7)),
        st.tuples(st.just("answer"), st.integers(min_value=0, max_value=30), st.floats(min_value=0.0, max_value=1.0)),
        st.tuples(st.just("reply"), st.floats(min_value=0.0, max_value=1.0)),
        st.tuples(st.just("fail"), st.integers(min_value=0, max_value=30)),
    ),
    max_size=80,
)


class Run:
    """Drives a policy like the listen stage does and checks every action against a model."""

    def __init__(self, timing: TurnTiming = TIMING) -> None:
        self.policy = TurnPolicy(timing)
        self.timing = timing
        self.silence = 0.0
        self.asks: list[Ask] = []  # every question, in order
        self.open_ask: Ask | None = None  # the one whose answer can still count
        self.asked_at: dict[Ask, float] = {}
        self.asks_this_pause = 0
        #: The last answer that counted in this pause: (asked at silence, probability).
        self.answered: tuple[float, float] | None = None
        self.ended: list[EndTurn] = []
        self.started = 0

    def apply(self, actions: list[Ask | EndTurn]) -> None:
        for action in actions:
            if isinstance(action, Ask):
                assert self.open_ask is None, "a second question while one is unanswered"
                assert action.utterance == self.policy.utterance == self.started
                assert all(action.ask > a.ask for a in self.asks)
                assert self.silence >= self.timing.pause
                self.asks.append(action)
                self.asked_at[action] = self.silence
                self.open_ask = action
                self.asks_this_pause += 1
                if self.timing.recheck == 0:
                    assert self.asks_this_pause == 1, "asked twice in one pause"
            else:
                assert action.utterance == self.started, "a turn ended that is not the current one"
                assert all(e.utterance != action.utterance for e in self.ended), "one utterance ended twice"
                self.ended.append(action)
                self.open_ask = None
                assert self.policy.phase is Phase.IDLE
                if action.reason == "detector":
                    assert self.answered is not None, "the detector ended a turn it said nothing about"
                    asked_at, probability = self.answered
                    silence = min(self.silence, self.timing.max_silence)
                    assert probability >= self.timing.threshold(max(asked_at, silence)) - EPS
                self.answered = None

    def due(self, silence: float | None = None) -> bool | None:
        """Whether the last answer's deadline has come by ``silence`` (default: now; None: too
        close to tell)."""
        if self.answered is None:
            return False
        asked_at, probability = self.answered
        margin = probability - self.timing.threshold(max(asked_at, self.silence if silence is None else silence))
        return None if abs(margin) < EPS else margin >= 0

    def speak(self) -> None:
        if self.policy.phase is Phase.IDLE:
            self.started += 1
        self.silence = 0.0
        self.open_ask = None  # answers about the shorter utterance no longer count
        self.answered = None  # nor does their deadline
        self.asks_this_pause = 0
        self.apply(self.policy.speech())
        assert self.policy.utterance == self.started

    def quiet(self, seconds: float) -> None:
        was = self.policy.phase
        self.silence += seconds
        before = len(self.ended)
        due = self.due()
        limit = self.silence >= self.timing.max_silence
        due_by_limit = self.due(self.timing.max_silence) if limit else False  # which came first
        self.apply(self.policy.silence(self.silence))
        ended = len(self.ended) > before
        if was is Phase.IDLE:
            assert not ended
        elif limit:
            assert ended
            if due_by_limit is not None:
                assert self.ended[-1].reason == ("detector" if due_by_limit else "silence")
        elif due:
            assert ended and self.ended[-1].reason == "detector"
        elif due is False:
            assert not ended

    def answer(self, pick: int, probability: float) -> None:
        if not self.asks:
            return
        ask = self.asks[pick % len(self.asks)]
        counts = self.open_ask is not None and ask == self.open_ask
        before = len(self.ended)
        if counts:
            self.answered = (self.asked_at[ask], probability)
            self.open_ask = None
        due = self.due()
        self.apply(self.policy.answer(ask.ask, probability))
        ended = len(self.ended) > before
        assert counts or not ended, "a stale answer ended a turn"
        if counts and due is not None:
            assert ended == due

    def reply(self, probability: float) -> None:
        """The detector answers the question the policy waits for (if any)."""
        if self.open_ask is not None:
            self.answer(self.asks.index(self.open_ask), probability)

    def fail(self, pick: int) -> None:
        if self.asks:
            ask = self.asks[pick % len(self.asks)]
            assert self.policy.failed(ask.ask) == []
            if ask == self.open_ask:
                self.open_ask = None

    def run(self, steps: list[tuple]) -> None:
        for step in steps:
            getattr(self, step[0])(*step[1:])


@settings(max_examples=400, deadline=None)
@given(timings() | st.just(DEFAULT) | st.just(TIMING), events)
def test_every_utterance_ends_exactly_once_whatever_the_timing(timing: TurnTiming, steps: list[tuple]) -> None:
    run = Run(timing)
    run.run(steps)
    run.quiet(timing.max_silence)  # the user stops for good
    assert [e.utterance for e in run.ended] == list(range(1, run.started + 1))


@settings(max_examples=300, deadline=None)
@given(timings() | st.just(DEFAULT), events, events)
def test_speech_after_a_turn_end_never_joins_the_ended_turn(timing: TurnTiming, first: list[tuple], later: list[tuple]) -> None:
    run = Run(timing)
    run.speak()
    run.run(first)
    run.quiet(timing.max_silence)
    ended = {e.utterance for e in run.ended}
    old_asks = list(run.asks)
    run.speak()
    assert run.policy.utterance not in ended
    # Late answers to questions about the ended turn change nothing.
    for ask in old_asks:
        assert run.policy.answer(ask.ask, 1.0) == []
    run.run(later)
    assert all(e.utterance not in ended for e in run.ended[len(ended):])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=0.3), min_size=1, max_size=40))
def test_while_the_detector_says_not_yet_it_is_asked_again_as_the_pause_grows(steps: list[float]) -> None:
    run = Run()
    run.speak()
    for step in steps:
        if run.policy.phase is Phase.IDLE:
            break
        run.quiet(step)
        if run.open_ask is not None:
            run.answer(len(run.asks) - 1, 0.1)
    asked_at = [a for a in run.asks]
    assert len(asked_at) <= 1 + int((TIMING.max_silence - TIMING.pause) / TIMING.recheck) + 1


@settings(max_examples=300, deadline=None)
@given(timings(), st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=3.0))
def test_a_deadline_is_the_first_silence_where_the_schedule_falls_to_the_answer(timing: TurnTiming, probability: float, asked_at: float) -> None:
    deadline = timing.deadline(asked_at, probability)
    assert deadline >= asked_at
    if deadline == float("inf"):
        assert probability < timing.schedule[-1][1]
    else:
        assert probability >= timing.threshold(deadline) - EPS
        if deadline > asked_at:  # not sooner
            assert probability <= timing.threshold(deadline - 1e-6) + EPS


@settings(max_examples=400, deadline=None)
@given(timings() | st.just(DEFAULT), st.floats(min_value=0.0, max_value=1.0), st.lists(st.floats(min_value=0.005, max_value=0.3), min_size=1, max_size=60))
def test_an_answer_ends_the_pause_at_its_deadline_or_the_silence_limit(timing: TurnTiming, probability: float, steps: list[float]) -> None:
    run = Run(timing)
    run.speak()
    run.quiet(timing.pause)
    run.reply(probability)
    silences = [run.silence]
    for step in steps:
        if run.ended:
            break
        run.quiet(step)
        silences.append(run.silence)
        if run.open_ask is not None:  # rechecking: the detector says the same again
            run.reply(probability)
    by_detector = timing.deadline(timing.pause, probability)
    deadline = min(by_detector, timing.max_silence)
    if run.ended:
        (end,) = run.ended
        # At the first report of silence at or past the deadline, not before.
        assert silences[-1] >= deadline - EPS
        assert len(silences) == 1 or silences[-2] < deadline + EPS
        if abs(by_detector - timing.max_silence) > EPS:
            assert end.reason == ("detector" if by_detector < timing.max_silence else "silence")
    else:
        assert silences[-1] < deadline + EPS


def test_the_schedule_holds_each_probability_from_its_silence_on() -> None:
    assert [DEFAULT.threshold(s) for s in (0.0, 0.2, 0.6, 0.99, 1.0, 5.0)] == [0.93, 0.93, 0.93, 0.93, 0.5, 0.5]
    assert TurnTiming.constant(0.8).threshold(0.3) == 0.8
    three = TurnTiming(schedule=((0.2, 0.95), (0.6, 0.8), (1.0, 0.5)))
    assert three.deadline(0.2, 0.96) == 0.2 and three.deadline(0.2, 0.85) == 0.6 and three.deadline(0.2, 0.6) == 1.0
    assert DEFAULT.deadline(0.2, 0.95) == 0.2
    assert DEFAULT.deadline(0.2, 0.7) == 1.0
    assert DEFAULT.deadline(0.2, 0.4) == float("inf")
    assert DEFAULT.deadline(1.2, 0.6) == 1.2


@pytest.mark.parametrize(
    "timing",
    [
        {"schedule": ()},
        {"schedule": ((0.2, 0.5), (0.4, 0.9))},  # rises
        {"schedule": ((0.4, 0.9), (0.2, 0.5))},  # out of order
        {"schedule": ((0.2, 0.0),)},
        {"recheck": -0.1},
        {"pause": 2.0},
    ],
)
def test_inconsistent_timings_are_refused(timing: dict) -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        TurnTiming(**timing)


def test_by_default_a_sure_answer_ends_the_turn_at_the_first_pause() -> None:
    policy = TurnPolicy(DEFAULT)
    policy.speech()
    (ask,) = policy.silence(0.2)
    assert policy.answer(ask.ask, 0.95) == [EndTurn(1, "detector")]


def test_by_default_a_doubtful_answer_is_a_deadline_not_a_verdict() -> None:
    policy = TurnPolicy(DEFAULT)
    policy.speech()
    (ask,) = policy.silence(0.2)
    assert policy.answer(ask.ask, 0.7) == []  # ends at 1 s of silence
    assert policy.silence(0.26) == [] and policy.silence(0.98) == []  # and is not asked again
    assert policy.silence(1.02) == [EndTurn(1, "detector")]


def test_speech_before_the_deadline_forgets_it() -> None:
    policy = TurnPolicy(DEFAULT)
    policy.speech()
    (ask,) = policy.silence(0.2)
    assert policy.answer(ask.ask, 0.6) == []
    policy.speech()  # "... the weather in Shanghai"
    (again,) = policy.silence(0.2)
    assert policy.silence(1.1) == []  # the first answer's deadline (1 s) no longer holds
    assert policy.answer(again.ask, 0.3) == []
    assert policy.silence(1.6) == [EndTurn(1, "silence")]


def test_an_answer_arriving_after_its_deadline_ends_the_turn_at_once() -> None:
    policy = TurnPolicy(DEFAULT)
    policy.speech()
    (ask,) = policy.silence(0.2)
    assert policy.silence(1.05) == []  # the detector is slow today
    assert policy.answer(ask.ask, 0.7) == [EndTurn(1, "detector")]


def test_with_recheck_the_newest_answer_sets_the_deadline() -> None:
    policy = TurnPolicy(TurnTiming(recheck=0.3))
    policy.speech()
    (first,) = policy.silence(0.2)
    assert policy.answer(first.ask, 0.6) == []  # deadline 1 s
    (second,) = policy.silence(0.5)
    assert policy.answer(second.ask, 0.3) == []  # heard more: no deadline now
    (third,) = policy.silence(0.8)
    assert policy.silence(0.9) == []
    assert policy.answer(third.ask, 0.95) == [EndTurn(1, "detector")]


def test_a_finished_sentence_ends_at_the_first_pause() -> None:
    policy = TurnPolicy(TIMING)
    policy.speech()
    assert policy.silence(0.1) == []
    (ask,) = policy.silence(0.2)
    assert isinstance(ask, Ask) and ask.utterance == 1
    assert policy.answer(ask.ask, 0.9) == [EndTurn(1, "detector")]


def test_an_unfinished_sentence_waits_and_asks_again() -> None:
    policy = TurnPolicy(TIMING)
    policy.speech()
    (first,) = policy.silence(0.2)
    assert policy.answer(first.ask, 0.1) == []
    assert policy.silence(0.5) == []  # not yet 0.2 + 0.4
    (second,) = policy.silence(0.65)
    assert isinstance(second, Ask) and second.ask != first.ask
    assert policy.answer(second.ask, 0.2) == []
    assert policy.silence(1.6) == [EndTurn(1, "silence")]


def test_speaking_again_before_the_answer_makes_it_stale() -> None:
    policy = TurnPolicy(TIMING)
    policy.speech()
    (ask,) = policy.silence(0.25)
    policy.speech()  # "... the weather in Shanghai"
    assert policy.answer(ask.ask, 0.99) == []
    assert policy.phase is Phase.SPEAKING and policy.utterance == 1
    (again,) = policy.silence(0.2)
    assert policy.answer(again.ask, 0.99) == [EndTurn(1, "detector")]


def test_a_failed_detector_leaves_the_silence_limit() -> None:
    policy = TurnPolicy(TIMING)
    policy.speech()
    (ask,) = policy.silence(0.2)
    assert policy.failed(ask.ask) == []
    assert policy.silence(1.7) == [EndTurn(1, "silence")]


def test_reset_and_forced_end() -> None:
    policy = TurnPolicy(TIMING)
    assert policy.end() == [] and policy.silence(5.0) == []
    policy.speech()
    (ask,) = policy.silence(0.3)
    policy.reset()
    assert policy.answer(ask.ask, 1.0) == [] and policy.phase is Phase.IDLE
    policy.speech()
    assert policy.end() == [EndTurn(2, "forced")]
