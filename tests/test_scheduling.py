"""The deadline queue's order (sans-IO, property-tested) and the saturation monitor."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.scheduling import DeadlineQueue, Job, SaturationMonitor, Urgency

MAX_WAIT = 2.0


@dataclass(frozen=True)
class Push:
    advance: float  # seconds the clock moves before the push
    slack: float  # due - now (negative: already late)


@dataclass(frozen=True)
class Pop:
    advance: float


@dataclass(frozen=True)
class Cancel:
    pick: int  # which queued job (index into the queued ones, modulo)


times = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)
operations = st.lists(
    st.one_of(
        st.builds(Push, times, st.floats(min_value=-2.0, max_value=10.0, allow_nan=False)),
        st.builds(Pop, times),
        st.builds(Cancel, st.integers(min_value=0, max_value=50)),
    ),
    max_size=80,
)


def effective(job: Job, max_wait: float) -> float:
    return min(max(job.urgency.due, job.submitted), job.submitted + max_wait)


def run(ops: list[Push | Pop | Cancel], max_wait: float = MAX_WAIT) -> tuple[list[tuple[Job, list[Job]]], list[Job]]:
    """Apply ``ops``; return each pop with the jobs still queued at that moment, and the cancelled."""
    queue = DeadlineQueue(max_wait)
    now = 0.0
    queued: list[Job] = []
    pops: list[tuple[Job, list[Job]]] = []
    cancelled: list[Job] = []
    for op in ops:
        match op:
            case Push(advance=advance, slack=slack):
                now += advance
                queued.append(queue.push(Urgency(now + slack), now))
            case Pop(advance=advance):
                now += advance
                job = queue.pop()
                if not queued:
                    assert job is None
                    continue
                assert job is not None
                queued.remove(job)
                pops.append((job, list(queued)))
            case Cancel(pick=pick) if queued:
                job = queued.pop(pick % len(queued))
                assert queue.remove(job)
                assert not queue.remove(job)  # a second cancel is a no-op
                cancelled.append(job)
        assert len(queue) == len(queued)
    return pops, cancelled


@settings(max_examples=300)
@given(operations)
def test_the_earliest_effective_deadline_is_served_first(ops: list[Push | Pop | Cancel]) -> None:
    for job, others in run(ops)[0]:
        for other in others:
            assert (effective(job, MAX_WAIT), job.seq) < (effective(other, MAX_WAIT), other.seq)


@settings(max_examples=300)
@given(operations)
def test_among_jobs_due_within_the_window_the_earliest_due_goes_first(ops: list[Push | Pop | Cancel]) -> None:
    """Plain EDF where aging does not apply: jobs not yet late and due within ``max_wait``."""
    for job, others in run(ops)[0]:
        for other in others:
            both_in_window = all(j.submitted <= j.urgency.due <= j.submitted + MAX_WAIT for j in (job, other))
            if both_in_window:
                assert job.urgency.due <= other.urgency.due


@settings(max_examples=300)
@given(operations)
def test_no_job_is_overtaken_by_one_submitted_max_wait_after_it(ops: list[Push | Pop | Cancel]) -> None:
    """No starvation: however urgent the later arrivals, a job waits at most for those submitted
    less than ``max_wait`` after it (and for those before it)."""
    for job, others in run(ops)[0]:
        assert not any(other.submitted + MAX_WAIT <= job.submitted for other in others)


@settings(max_examples=300)
@given(operations)
def test_cancelled_jobs_are_never_served(ops: list[Push | Pop | Cancel]) -> None:
    pops, cancelled = run(ops)
    served = {id(job) for job, _ in pops}
    assert not any(id(job) in served for job in cancelled)


@given(st.lists(st.floats(min_value=-1.0, max_value=10.0, allow_nan=False), min_size=1, max_size=30))
def test_without_a_wait_allowance_the_queue_is_fifo(slacks: list[float]) -> None:
    queue = DeadlineQueue(0.0)
    jobs = [queue.push(Urgency(i + slack), float(i)) for i, slack in enumerate(slacks)]
    assert [queue.pop() for _ in jobs] == jobs
    assert queue.pop() is None


def test_many_cancellations_do_not_keep_the_heap_large() -> None:
    queue = DeadlineQueue(MAX_WAIT)
    jobs = [queue.push(Urgency(float(i)), 0.0) for i in range(200)]
    for job in jobs[:190]:
        queue.remove(job)
    assert len(queue) == 10
    assert len(queue._heap) < 100
    assert [queue.pop() for _ in range(10)] == jobs[190:]


def test_saturation_starts_with_a_late_start_and_ends_after_a_calm_spell() -> None:
    monitor = SaturationMonitor(late_after=0.25, calm_for=5.0)
    on_time = Job(Urgency(10.0, "first_audio"), 10.0, 10.0, 0)
    assert monitor.started(on_time, 10.1) is None
    late = Job(Urgency(10.0, "speech_end"), 10.0, 10.0, 1)
    change = monitor.started(late, 10.6)
    assert change is not None and change.saturated and change.kind == "speech_end"
    assert abs(change.lateness - 0.6) < 1e-9
    assert monitor.started(Job(Urgency(11.0), 11.0, 11.0, 2), 12.0) is None  # still saturated
    assert monitor.check(16.9) is None  # 4.9 s since the last late start
    end = monitor.check(17.0)
    assert end is not None and not end.saturated and abs(end.lateness - 1.0) < 1e-9
    assert monitor.check(30.0) is None
    assert monitor.episodes == 1


def test_a_job_due_later_than_it_starts_is_not_late() -> None:
    monitor = SaturationMonitor(late_after=0.25)
    run_ahead = Job(Urgency(20.0, "playback"), 10.0, 12.0, 0)
    assert monitor.started(run_ahead, 19.0) is None
    assert not monitor.saturated


# ---- when a reply's next piece of work is due (stages/pacing.py) ----------------------------


def test_a_reply_without_audio_needs_its_first_clause_now() -> None:
    from xiaozhi_trio.pipeline.stages.pacing import Pacer, Runway

    runway = Runway(Pacer(0.06, 0.18))
    assert runway.urgency(5.0) == Urgency(5.0, "first_audio")


@given(
    made=st.integers(min_value=1, max_value=400),
    sent=st.integers(min_value=0, max_value=400),
    later=st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
)
def test_later_audio_is_due_when_the_device_would_run_dry(made: int, sent: int, later: float) -> None:
    """Due = what the device still has queued + what is encoded but not sent yet."""
    from xiaozhi_trio.pipeline.stages.pacing import Pacer, Runway

    pacer = Pacer(0.06, 0.18)
    runway = Runway(pacer)
    runway.made(made)
    sent = min(sent, made)
    for _ in range(sent):
        pacer.sent(0.0)  # a burst at 0: the device has sent * 60 ms queued
    urgency = runway.urgency(later)
    assert urgency.kind == "playback"
    played_out = sent * 0.06
    expected = max(later, played_out) + (made - sent) * 0.06
    assert abs(urgency.due - expected) < 1e-9


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), st.sampled_from([None, "asr", "tts"])), max_size=30),
    st.sets(st.sampled_from(["asr", "tts"])),
)
def test_jobs_on_a_busy_model_are_passed_over_and_keep_their_place(jobs: list[tuple[float, str | None]], busy: set[str]) -> None:
    queue = DeadlineQueue(MAX_WAIT)
    pushed = [queue.push(Urgency(due), 0.0, model=model) for due, model in jobs]
    free = [job for job in pushed if job.model not in busy]
    expected = min(free, key=lambda job: (job.effective, job.seq)) if free else None
    assert queue.pop(busy) is expected
    # The passed-over jobs are all still there, in order, once their model is free.
    rest = sorted((job for job in pushed if job is not expected), key=lambda job: (job.effective, job.seq))
    assert [queue.pop() for _ in rest] == rest
