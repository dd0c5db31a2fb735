"""The turn policy as a pure state machine, under any timing of pauses and detector answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.stages.turn_policy import Ask, EndTurn, Phase, TurnPolicy, TurnTiming

TIMING = TurnTiming(pause=0.2, max_silence=1.6, recheck=0.4, threshold=0.5)

events = st.lists(
    st.one_of(
        st.tuples(st.just("speak")),
        st.tuples(st.just("quiet"), st.floats(min_value=0.0, max_value=0.7)),
        st.tuples(st.just("answer"), st.integers(min_value=0, max_value=30), st.floats(min_value=0.0, max_value=1.0)),
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
        self.ended: list[EndTurn] = []
        self.started = 0

    def apply(self, actions: list[Ask | EndTurn]) -> None:
        for action in actions:
            if isinstance(action, Ask):
                assert self.open_ask is None, "a second question while one is unanswered"
                assert action.utterance == self.policy.utterance == self.started
                assert all(action.ask > a.ask for a in self.asks)
                self.asks.append(action)
                self.open_ask = action
            else:
                assert action.utterance == self.started, "a turn ended that is not the current one"
                assert all(e.utterance != action.utterance for e in self.ended), "one utterance ended twice"
                self.ended.append(action)
                self.open_ask = None
                assert self.policy.phase is Phase.IDLE

    def speak(self) -> None:
        if self.policy.phase is Phase.IDLE:
            self.started += 1
        self.silence = 0.0
        self.open_ask = None  # answers about the shorter utterance no longer count
        self.apply(self.policy.speech())
        assert self.policy.utterance == self.started

    def quiet(self, seconds: float) -> None:
        was = self.policy.phase
        self.silence += seconds
        before = len(self.ended)
        self.apply(self.policy.silence(self.silence))
        if was is not Phase.IDLE and self.silence >= self.timing.max_silence:
            assert len(self.ended) == before + 1 and self.ended[-1].reason == "silence"

    def answer(self, pick: int, probability: float) -> None:
        if not self.asks:
            return
        ask = self.asks[pick % len(self.asks)]
        counts = self.open_ask is not None and ask == self.open_ask
        before = len(self.ended)
        self.apply(self.policy.answer(ask.ask, probability))
        if len(self.ended) > before:
            assert counts and probability >= self.timing.threshold and self.ended[-1].reason == "detector"
        elif counts:
            assert probability < self.timing.threshold
        if counts:
            self.open_ask = None

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
@given(events)
def test_every_utterance_ends_exactly_once_whatever_the_timing(steps: list[tuple]) -> None:
    run = Run()
    run.run(steps)
    run.quiet(TIMING.max_silence)  # the user stops for good
    assert [e.utterance for e in run.ended] == list(range(1, run.started + 1))


@settings(max_examples=300, deadline=None)
@given(events, events)
def test_speech_after_a_turn_end_never_joins_the_ended_turn(first: list[tuple], later: list[tuple]) -> None:
    run = Run()
    run.speak()
    run.run(first)
    run.quiet(TIMING.max_silence)
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
