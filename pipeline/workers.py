"""A process-wide pool of CPU time for backend calls (ASR decode, TTS generate, opening a VAD
stream, Opus encoding of a sentence).

All sessions queue on one ``trio.CapacityLimiter`` (FIFO, so fair) sized to the cores, and the work
runs in worker threads so the event loop keeps pacing audio for everyone else. Per-packet work that
is cheaper than a thread hand-off stays on the event loop: Opus decoding and ``VadStream.feed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


def default_thread_count() -> int:
    """One worker per core the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class CpuWorkers:
    """Runs blocking calls in threads, at most ``threads`` at once across the whole process."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or default_thread_count()
        self._limiter = trio.CapacityLimiter(self.threads)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Call ``fn(*args)`` in a worker thread.

        On cancellation (barge-in) the caller returns at once and the thread's result is thrown
        away; the limiter slot is freed only when the thread really finishes, so the cores are
        never oversubscribed. Callers must therefore not reuse per-call state after a cancel.
        """
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)

    @property
    def busy(self) -> int:
        """Threads running now."""
        return self._limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        """Calls queued for a thread."""
        return self._limiter.statistics().tasks_waiting
