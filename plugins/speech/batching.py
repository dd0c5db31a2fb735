"""Decode what several sessions are waiting for in one call, without a background task.

Callers queue their item and wait. When fewer than ``parallel`` batches are running, the first
waiter becomes a leader: it lets the other tasks that are ready to run join the queue (one
checkpoint), takes the queue (up to ``max_batch`` items), runs the batch function once in a CPU
worker, and hands each waiter its result. Items that arrive while batches run form the next batch,
led by whichever of their waiters wakes first. ``parallel`` above one suits a batch function that
gains nothing from larger batches (sherpa-onnx decodes Moonshine and Whisper streams one after
another): batches of one on every core instead of one core taking everyone in turn.

A leader cancelled mid-batch returns at once (its worker thread is abandoned, see
``CpuWorkers.run``); the other items of that batch go back to the front of the queue and are
decoded again by the next leader. The batch function must therefore make all per-call state
(recognition streams) itself, from immutable inputs, and never share it between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

import outcome
import trio

from xiaozhi_trio.pipeline.workers import CpuWorkers

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Job(Generic[T, R]):
    item: T
    result: outcome.Outcome[R] | None = None


@dataclass
class BatchStats:
    """What a batcher has done, for tests, benchmarks and metrics."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    #: Items put back in the queue because their batch's leader was cancelled.
    requeued: int = 0
    #: The most batches that ever ran at once.
    most_running: int = 0
    sizes: list[int] = field(default_factory=list)


class Batcher(Generic[T, R]):
    """Runs ``decode_batch(items) -> results`` (same length and order) for waiting callers."""

    def __init__(
        self,
        decode_batch: Callable[[list[T]], Sequence[R]],
        workers: CpuWorkers,
        *,
        max_batch: int = 16,
        parallel: int = 1,
        model: object = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self._decode_batch = decode_batch
        self._workers = workers
        self._max_batch = max_batch
        self._parallel = parallel
        self._model = model  # what the batches run on, for the pool (see CpuWorkers.run)
        self._queue: list[_Job[T, R]] = []
        self._running = 0  # batches running now
        self._finished = trio.Event()  # set when a running batch ends; replaced for the next
        self.stats = BatchStats()

    async def decode(self, item: T) -> R:
        """Queue ``item``, wait for (or lead) the batch that decodes it, return its result."""
        job: _Job[T, R] = _Job(item)
        self._queue.append(job)
        try:
            while job.result is None:
                # A job already taken by a running batch waits for it, whatever the free places.
                if job in self._queue and self._running < self._parallel:
                    await self._lead(job)
                else:
                    await self._finished.wait()
        finally:
            if job in self._queue:  # cancelled before any batch took it
                self._queue.remove(job)
        return job.result.unwrap()

    async def _lead(self, own: _Job[T, R]) -> None:
        self._running += 1
        self.stats.most_running = max(self.stats.most_running, self._running)
        batch: list[_Job[T, R]] = []
        try:
            # Let callers that are ready to run now join this batch.
            await trio.lowlevel.checkpoint()
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            if not batch:
                return
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self.stats.sizes.append(len(batch))
            result = await outcome.acapture(partial(self._workers.run, model=self._model), self._run, [job.item for job in batch])
            if isinstance(result, outcome.Error) and not isinstance(result.error, Exception):
                # Cancelled (or interrupted): the others go back to the front of the queue.
                raise result.error
            if isinstance(result, outcome.Error):  # the batch failed: each of its waiters raises the error
                for job in batch:
                    job.result = outcome.Error(result.error)
            else:
                for job, value in zip(batch, result.unwrap(), strict=True):
                    job.result = outcome.Value(value)
        except BaseException:
            others = [job for job in batch if job.result is None and job is not own]
            self._queue[:0] = others
            self.stats.requeued += len(others)
            raise
        finally:
            self._running -= 1
            self._finished.set()
            self._finished = trio.Event()

    def _run(self, items: list[T]) -> list[R]:
        results = list(self._decode_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"the batch function returned {len(results)} results for {len(items)} items")
        return results
