"""A stand-in for worker threads under trio's autojump clock: pool calls that take virtual CPU time.

``CpuWorkers(runner=VirtualThreads())`` keeps the real scheduling (deadlines, queue, limiter
protocol) and replaces only the thread: a call holds its "thread" for ``CpuWork.seconds`` of trio
time and then runs inline. As with real threads under ``abandon_on_cancel``, a cancelled caller
returns at once while its thread keeps the slot until the work would have finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio


@dataclass(frozen=True)
class CpuWork:
    """``fn`` costing ``seconds`` of one core."""

    seconds: float
    fn: Callable[[], Any] = lambda: None

    def __call__(self) -> Any:
        return self.fn()


class VirtualThreads:
    """A ``CpuWorkers`` runner: ``CpuWork`` takes its ``seconds``; anything else takes none."""

    def __init__(self) -> None:
        #: (kind of work, start, end) of every call that ran, in start order.
        self.log: list[tuple[str, float, float]] = []

    async def __call__(self, fn: Callable[..., Any], args: tuple[Any, ...], limiter: Any) -> Any:
        await limiter.acquire_on_behalf_of(self)
        done = trio.Event()
        result: list[outcome.Outcome[Any]] = []
        seconds = fn.seconds if isinstance(fn, CpuWork) else 0.0
        kind = limiter._urgency.kind

        async def thread() -> None:
            start = trio.current_time()
            try:
                await trio.sleep(seconds)
                result.append(outcome.capture(fn, *args))
            finally:
                self.log.append((kind, start, trio.current_time()))
                limiter.release_on_behalf_of(self)
                done.set()

        trio.lowlevel.spawn_system_task(thread)
        await done.wait()
        return result[0].unwrap()
