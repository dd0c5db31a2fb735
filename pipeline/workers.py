"""A process-wide pool of CPU time for backend calls (ASR decode, TTS generate, opening a VAD
stream, Opus encoding of a sentence).

All sessions share ``threads`` worker threads (one per core by default), so the event loop keeps
pacing audio for everyone while models run. Who gets a free thread is decided by deadline
(``pipeline/scheduling.py``): each call carries an ``Urgency`` — given explicitly, or set for a
whole stretch of a task with ``work_urgency`` (a context variable, inherited by the tasks it
starts), so backends need not know about it. A call that says nothing is due at once. Per-packet
work that is cheaper than a thread hand-off stays on the event loop: Opus decoding and
``VadStream.feed``.

A call may name the ``model`` it runs (a loaded recognizer or voice). With ``one_run_per_model``
(the default) the pool never runs two calls on one model at once and gives the threads to other
work meanwhile: onnxruntime keeps the working memory of every run of a model that overlaps
another in that model's arena, and keeps it for good, so two overlapping decodes cost hundreds
of MB that never come back (measured in docs/benchmarks.md).

The pool also keeps what an operator needs to see overload: how long calls waited for a thread,
per kind of work, and whether the pool is saturated (logged when it starts and stops).
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from .scheduling import OTHER, DeadlineQueue, Job, SaturationChange, SaturationMonitor, Urgency

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The urgency of calls made by the current task (and tasks it starts) that give none.
_urgency: contextvars.ContextVar[Urgency | None] = contextvars.ContextVar("xiaozhi_work_urgency", default=None)

#: Seconds; queue waits from "got a thread at once" to "overloaded".
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
#: Default longest a job can be put off by later, more urgent ones (see ``DeadlineQueue``).
MAX_WAIT = 2.0


def default_thread_count() -> int:
    """One worker per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def work_urgency(urgency: Urgency) -> Iterator[Urgency]:
    """Within the block, pool calls of this task (and of tasks it starts) have ``urgency``."""
    token = _urgency.set(urgency)
    try:
        yield urgency
    finally:
        _urgency.reset(token)


def current_urgency() -> Urgency:
    """The urgency set by ``work_urgency`` around this task, else "due now"."""
    return _urgency.get() or Urgency(trio.current_time(), OTHER)


class Limiter(Protocol):
    """What ``trio.to_thread.run_sync`` needs of its ``limiter``."""

    async def acquire_on_behalf_of(self, borrower: object) -> None: ...

    def release_on_behalf_of(self, borrower: object) -> None: ...


#: Runs ``fn(*args)`` holding ``limiter`` for as long as the work really runs.
Runner = Callable[[Callable[..., Any], tuple[Any, ...], Limiter], Awaitable[Any]]


async def run_in_thread(fn: Callable[..., T], args: tuple[Any, ...], limiter: Limiter) -> T:
    """A worker thread. On cancellation (barge-in) the caller returns at once and the thread's
    result is thrown away; the limiter is released only when the thread really finishes, so the
    cores are never oversubscribed. Callers must not reuse per-call state after a cancel."""
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter, abandon_on_cancel=True)  # type: ignore[arg-type]


@dataclass
class WaitHistogram:
    """Queue waits of one kind of work, in ``WAIT_BUCKETS`` (non-cumulative, +Inf last)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    total: float = 0.0
    longest: float = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(WAIT_BUCKETS) if seconds <= bound), len(WAIT_BUCKETS))
        self.counts[index] += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)

    @property
    def count(self) -> int:
        return sum(self.counts)


class _Ticket:
    """One call's claim on a thread, in the shape of a trio limiter."""

    def __init__(self, pool: CpuWorkers, urgency: Urgency, model: object) -> None:
        self._pool = pool
        self._urgency = urgency
        self._model = model

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await self._pool._acquire(self._urgency, self._model)

    def release_on_behalf_of(self, borrower: object) -> None:
        self._pool._release(self._model)


class CpuWorkers:
    """Runs blocking calls in threads, at most ``threads`` at once across the whole process,
    earliest deadline first."""

    def __init__(
        self,
        threads: int | None = None,
        *,
        max_wait: float = MAX_WAIT,
        one_run_per_model: bool = True,
        runner: Runner = run_in_thread,
    ) -> None:
        self.threads = threads or default_thread_count()
        self.one_run_per_model = one_run_per_model
        self._queue = DeadlineQueue(max_wait)
        self._running = 0
        #: Models with a call running now.
        self._busy_models: set[object] = set()
        self._runner = runner
        self.monitor = SaturationMonitor()
        #: Queue waits per kind of work.
        self.waits: dict[str, WaitHistogram] = {}

    async def run(self, fn: Callable[..., T], *args: object, urgency: Urgency | None = None, model: object = None) -> T:
        """Call ``fn(*args)`` in a worker thread when its turn comes (``urgency``, else the one
        set with ``work_urgency``, else due now) and, with ``one_run_per_model``, when no other
        call runs on ``model`` (any hashable, e.g. the loaded model object). Cancelling the
        caller drops a queued call at once."""
        exclusive = model if self.one_run_per_model else None
        ticket = _Ticket(self, urgency or current_urgency(), exclusive)
        return await self._runner(fn, args, ticket)  # type: ignore[no-any-return]

    @property
    def parallel_per_model(self) -> int:
        """How many calls on one model may run at once."""
        return 1 if self.one_run_per_model else self.threads

    @property
    def busy(self) -> int:
        """Threads running now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Calls queued for a thread."""
        return len(self._queue)

    @property
    def saturation(self) -> float:
        """Demand over capacity now: (running + queued calls) / threads; above 1, calls queue."""
        return (self._running + len(self._queue)) / self.threads

    def check_saturation(self, now: float | None = None) -> None:
        """End a saturation episode that has calmed down (the pool checks on its own as calls
        start and end; a metrics scrape calls this too, so a pool gone idle reports it)."""
        self._report(self.monitor.check(trio.current_time() if now is None else now))

    # ---- the limiter side: called by the runner ----

    async def _acquire(self, urgency: Urgency, model: object) -> None:
        granted = trio.Event()
        job = self._queue.push(urgency, trio.current_time(), granted, model)
        self._dispatch()
        try:
            await granted.wait()
        except BaseException:
            if not self._queue.remove(job):  # a thread was handed to us meanwhile: pass it on
                self._release(model)
            raise

    def _release(self, model: object) -> None:
        self._running -= 1
        self._busy_models.discard(model)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free threads to the most urgent calls whose model is free."""
        now = trio.current_time()
        while self._running < self.threads and (job := self._queue.pop(self._busy_models)) is not None:
            self._running += 1
            if job.model is not None:
                self._busy_models.add(job.model)
            self._started(job, now)
            assert isinstance(job.payload, trio.Event)
            job.payload.set()
        self._report(self.monitor.check(now))

    def _started(self, job: Job, now: float) -> None:
        self.waits.setdefault(job.kind, WaitHistogram()).observe(now - job.submitted)
        self._report(self.monitor.started(job, now))

    def _report(self, change: SaturationChange | None) -> None:
        if change is None:
            return
        if change.saturated:
            log.warning(
                "CPU workers saturated: %s work started %.2f s late (%d running, %d queued); replies will be late",
                change.kind, change.lateness, self._running, len(self._queue),
            )
        else:
            log.warning("CPU workers no longer saturated (worst lateness %.2f s)", change.lateness)
