"""Cross-session batching of recognizer work (with a stand-in batch function)."""

from __future__ import annotations

import queue
import threading

import trio
import trio.testing

from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech.batching import Batcher

# --------------------------------------------------------------------------------------------
# Cross-session batching (with a stand-in batch function)
# --------------------------------------------------------------------------------------------


class _Doubler:
    """A batch function that doubles numbers and remembers each batch; can be made to block."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: threading.Event | None = None
        self._entered: queue.Queue[list[int]] = queue.Queue()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self._entered.put(list(items))
        if self.gate is not None:
            self.gate.wait(10)
        if any(i < 0 for i in items):
            raise RuntimeError("negative input")
        return [2 * i for i in items]

    async def entered(self) -> list[int]:
        """Wait until a worker thread is inside the next batch; return its items."""
        return await trio.to_thread.run_sync(self._entered.get, True, 10.0)


async def _decode_all(batcher: Batcher[int, int], items: list[int]) -> dict[int, int]:
    results: dict[int, int] = {}

    async def one(item: int) -> None:
        results[item] = await batcher.decode(item)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    return results


async def test_callers_that_arrive_together_share_one_batch() -> None:
    fn = _Doubler()
    batcher = Batcher(fn, CpuWorkers(2))
    assert await _decode_all(batcher, [1, 2, 3, 4, 5]) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10}
    assert len(fn.batches) == 1 and sorted(fn.batches[0]) == [1, 2, 3, 4, 5]
    assert batcher.stats.batches == 1 and batcher.stats.items == 5


async def test_callers_that_arrive_during_a_batch_form_the_next_one() -> None:
    fn = _Doubler()
    fn.gate = threading.Event()
    batcher = Batcher(fn, CpuWorkers(2))
    results: dict[int, int] = {}

    async def one(item: int) -> None:
        results[item] = await batcher.decode(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 1)
        assert await fn.entered() == [1]
        for item in (2, 3, 4):
            nursery.start_soon(one, item)
        await trio.testing.wait_all_tasks_blocked()
        fn.gate.set()
    assert results == {1: 2, 2: 4, 3: 6, 4: 8}
    assert fn.batches[0] == [1] and sorted(fn.batches[1]) == [2, 3, 4] and len(fn.batches) == 2


async def test_batches_are_limited_in_size() -> None:
    fn = _Doubler()
    batcher = Batcher(fn, CpuWorkers(2), max_batch=2)
    assert len(await _decode_all(batcher, list(range(5)))) == 5
    assert [len(b) for b in fn.batches] == [2, 2, 1]


async def test_a_cancelled_leader_hands_its_batch_to_the_others() -> None:
    fn = _Doubler()
    fn.gate = threading.Event()
    batcher = Batcher(fn, CpuWorkers(2))
    results: dict[int, int] = {}

    async def one(item: int) -> None:
        results[item] = await batcher.decode(item)

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as leader_scope:
            async with trio.open_nursery() as leader:
                leader.start_soon(one, 1)
                assert await fn.entered() == [1]
                for item in (2, 3):  # these wait for the running batch to end
                    nursery.start_soon(one, item)
                await trio.testing.wait_all_tasks_blocked()
                leader_scope.cancel()
        # One of them leads the next batch at once, while the abandoned thread still runs.
        assert sorted(await fn.entered()) == [2, 3]
        fn.gate.set()
    assert results == {2: 4, 3: 6}
    assert batcher.stats.requeued == 0  # the leader's batch held only its own item


async def test_a_cancelled_leader_requeues_the_items_of_its_batch() -> None:
    fn = _Doubler()
    fn.gate = threading.Event()
    batcher = Batcher(fn, CpuWorkers(2))
    results: dict[int, int] = {}
    scopes = {item: trio.CancelScope() for item in (1, 2)}

    async def one(item: int) -> None:
        with scopes[item]:
            results[item] = await batcher.decode(item)

    async with trio.open_nursery() as nursery:
        for item in (1, 2):
            nursery.start_soon(one, item)
        batch = await fn.entered()
        assert sorted(batch) == [1, 2]
        leader, other = batch  # the leader queued first
        scopes[leader].cancel()
        assert await fn.entered() == [other]  # decoded again, by the other as the new leader
        fn.gate.set()  # both threads finish; the abandoned one's results are thrown away
    assert results == {other: 2 * other}
    assert batcher.stats.requeued == 1


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    batcher = Batcher(_Doubler(), CpuWorkers(2))
    errors = []

    async def one(item: int) -> None:
        try:
            await batcher.decode(item)
        except RuntimeError as e:
            errors.append(str(e))

    async with trio.open_nursery() as nursery:
        for item in (1, -1, 2):
            nursery.start_soon(one, item)
    assert errors == ["negative input"] * 3
    assert await batcher.decode(3) == 6  # and the batcher goes on


async def test_a_caller_cancelled_while_queued_leaves_the_queue() -> None:
    fn = _Doubler()
    fn.gate = threading.Event()
    batcher = Batcher(fn, CpuWorkers(2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.decode, 1)
        assert await fn.entered() == [1]
        with trio.CancelScope() as scope:
            nursery.start_soon(lambda: _cancel_soon(scope))
            await batcher.decode(2)
        fn.gate.set()
    assert fn.batches == [[1]]


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()
