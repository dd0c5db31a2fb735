"""The worker pool's trio shell: deadline order, cancellation, urgency by context, wait figures."""

from __future__ import annotations

import logging
import threading

import pytest
import trio
import trio.testing
from xiaozhi_trio.pipeline.scheduling import FIRST_AUDIO, PLAYBACK, SPEECH_END, Urgency
from xiaozhi_trio.pipeline.workers import CpuWorkers, current_urgency, work_urgency

from xiaozhi_trio.plugins.testing.fakes.workers import CpuWork, VirtualThreads


def pool(threads: int = 1, **kwargs: float) -> tuple[CpuWorkers, VirtualThreads]:
    runner = VirtualThreads()
    return CpuWorkers(threads, runner=runner, **kwargs), runner


async def test_a_free_thread_takes_the_earliest_deadline(autojump_clock: trio.testing.MockClock) -> None:
    workers, threads = pool(1)
    order: list[str] = []

    async def call(name: str, due: float, kind: str) -> None:
        await workers.run(CpuWork(0.1, lambda: order.append(name)), urgency=Urgency(due, kind))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "busy", 0.0, PLAYBACK)
        await trio.sleep(0.01)  # the thread is taken; the rest queue
        nursery.start_soon(call, "story, in 5 s", 5.0, PLAYBACK)
        nursery.start_soon(call, "story, in 1 s", 1.0, PLAYBACK)
        await trio.sleep(0.01)
        nursery.start_soon(call, "question", trio.current_time(), SPEECH_END)
        await trio.sleep(0.01)
        assert workers.waiting == 3 and workers.busy == 1
        assert workers.saturation == 4
    assert order == ["busy", "question", "story, in 1 s", "story, in 5 s"]
    assert workers.busy == 0 and workers.waiting == 0


async def test_cancelling_a_session_drops_its_queued_calls_at_once(autojump_clock: trio.testing.MockClock) -> None:
    workers, threads = pool(1)
    ran: list[str] = []

    async def call(name: str, seconds: float) -> None:
        await workers.run(CpuWork(seconds, lambda: ran.append(name)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "running", 1.0)
        await trio.sleep(0.1)
        with trio.CancelScope() as session:
            async with trio.open_nursery() as own:
                for i in range(5):
                    own.start_soon(call, f"session {i}", 1.0)
                await trio.sleep(0.1)
                nursery.start_soon(call, "other session", 1.0)
                await trio.sleep(0.1)
                assert workers.waiting == 6
                session.cancel()
        assert workers.waiting == 1  # at once, while "running" still holds the thread
        assert trio.current_time() < 1.0
    assert ran == ["running", "other session"]


async def test_a_cancelled_running_call_keeps_its_thread_until_the_work_ends(autojump_clock: trio.testing.MockClock) -> None:
    """Like an abandoned thread: the caller returns at once, the core stays taken."""
    workers, threads = pool(1)
    with trio.move_on_after(0.5):
        await workers.run(CpuWork(2.0))
    assert trio.current_time() == pytest.approx(0.5)
    assert workers.busy == 1
    await workers.run(CpuWork(0.0))
    assert trio.current_time() == pytest.approx(2.0)
    assert workers.busy == 0


async def test_urgency_set_around_a_task_reaches_calls_in_the_tasks_it_starts(autojump_clock: trio.testing.MockClock) -> None:
    workers, threads = pool(1)
    seen: list[Urgency] = []

    async def backend_call() -> None:
        seen.append(current_urgency())
        await workers.run(CpuWork(0.1))

    with work_urgency(Urgency(7.0, FIRST_AUDIO)):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend_call)
    await backend_call()
    assert seen[0] == Urgency(7.0, FIRST_AUDIO)
    assert seen[1].kind == "other" and seen[1].due == pytest.approx(0.1)
    assert [kind for kind, _, _ in threads.log] == [FIRST_AUDIO, "other"]


async def test_waits_are_counted_per_kind_and_saturation_is_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    workers, threads = pool(1)
    caplog.set_level(logging.WARNING, logger="xiaozhi_trio.pipeline.workers")
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(lambda: workers.run(CpuWork(0.5), urgency=Urgency(trio.current_time(), SPEECH_END)))
    assert workers.waits[SPEECH_END].count == 3
    assert workers.waits[SPEECH_END].longest == pytest.approx(1.0)
    assert workers.monitor.saturated
    assert "saturated: speech_end work started 0.50 s late" in caplog.text
    await trio.sleep(10)
    workers.check_saturation()
    assert not workers.monitor.saturated
    assert "no longer saturated (worst lateness 1.00 s)" in caplog.text


async def test_real_threads_run_the_call_off_the_event_loop() -> None:
    workers = CpuWorkers(2)
    loop_thread = threading.get_ident()
    idents = await workers.run(threading.get_ident)
    assert idents != loop_thread
    release = threading.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(workers.run, release.wait)
        while workers.busy < 2:
            await trio.sleep(0.01)
        assert workers.waiting == 1  # two threads at most
        release.set()
    assert workers.busy == 0


async def test_one_call_per_model_at_a_time_and_the_other_thread_does_other_work(autojump_clock: trio.testing.MockClock) -> None:
    workers, threads = pool(2)
    asr, tts = object(), object()
    async with trio.open_nursery() as nursery:
        for kind, model in [("asr 1", asr), ("asr 2", asr), ("tts", tts), ("encode", None)]:
            nursery.start_soon(lambda kind=kind, model=model: workers.run(CpuWork(1.0), urgency=Urgency(0.0, kind), model=model))
            await trio.sleep(0)
    spans = {kind: (start, end) for kind, start, end in threads.log}
    assert spans["asr 1"] == (0.0, 1.0)
    assert spans["tts"] == (0.0, 1.0)  # the second thread skips "asr 2", whose model is busy
    assert spans["asr 2"][0] == 1.0 and spans["encode"][0] == 1.0
    assert workers.busy == 0


async def test_without_one_run_per_model_calls_on_one_model_overlap(autojump_clock: trio.testing.MockClock) -> None:
    workers, threads = pool(2, one_run_per_model=False)
    model = object()
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(lambda: workers.run(CpuWork(1.0), model=model))
    assert trio.current_time() == pytest.approx(1.0)
    assert workers.parallel_per_model == 2
