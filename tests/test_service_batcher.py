"""Micro-batching: concurrent submits share calls, in order, within the size limit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from service.batcher import BatcherClosed, MicroBatcher


def same(item: int) -> int:
    """No preparation: the item is what the batch function takes."""
    return item


T = TypeVar("T")


class Recorder:
    """A batch function that records its batch sizes and the thread it ran on; with a
    ``gate``, each call waits until the test opens it (the encoder is busy until then)."""

    def __init__(
        self, delay: float = 0.0, fail_on: int | None = None, gate: threading.Event | None = None
    ) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay, self.fail_on, self.gate = delay, fail_on, gate

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "the test never opened the gate"
        time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


async def until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait on the loop until ``check()`` holds (a state, not a guess of how long it takes)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the batcher never got there"
        await asyncio.sleep(0.001)


def _run(
    fn: Recorder,
    max_size: int,
    max_wait: float,
    coro_factory: Callable[[MicroBatcher[int, int]], Awaitable[T]],
) -> T:
    """Run ``coro_factory(batcher)`` on a fresh loop with a one-thread executor."""

    async def main() -> T:
        with ThreadPoolExecutor(1, thread_name_prefix="enc") as pool:
            batcher: MicroBatcher[int, int] = MicroBatcher(fn, pool, max_size, max_wait)
            try:
                return await coro_factory(batcher)
            finally:
                await batcher.close()

    return asyncio.run(main())


def test_concurrent_submits_share_one_call_off_the_loop() -> None:
    fn = Recorder()

    async def go(b: MicroBatcher[int, int]) -> list[int]:
        return list(await asyncio.gather(*(b.submit(i, same) for i in range(8))))

    assert _run(fn, 16, 0.05, go) == [i * 10 for i in range(8)]
    assert fn.sizes == [8]
    assert fn.threads and all(t.startswith("enc") for t in fn.threads)


def test_batches_never_exceed_max_size_and_fill_while_busy() -> None:
    fn = Recorder(delay=0.02)

    async def go(b: MicroBatcher[int, int]) -> list[int]:
        return list(await asyncio.gather(*(b.submit(i, same) for i in range(10))))

    assert _run(fn, 4, 0.0, go) == [i * 10 for i in range(10)]
    assert max(fn.sizes) <= 4 and sum(fn.sizes) == 10
    assert len(fn.sizes) <= 4, f"no batching under load: {fn.sizes}"


def test_a_failing_batch_fails_its_callers_only() -> None:
    fn = Recorder(fail_on=3)

    async def go(b: MicroBatcher[int, int]) -> tuple[list[object], int]:
        first = await asyncio.gather(*(b.submit(i, same) for i in range(4)), return_exceptions=True)
        return list(first), await b.submit(5, same)

    first, later = _run(fn, 8, 0.05, go)
    assert all(isinstance(r, ValueError) and "bad item 3" in str(r) for r in first)
    assert later == 50


def test_close_finishes_queued_items_then_refuses() -> None:
    fn = Recorder(delay=0.01)

    async def go(b: MicroBatcher[int, int]) -> list[int]:
        pending = [asyncio.ensure_future(b.submit(i, same)) for i in range(6)]
        await asyncio.sleep(0)  # let them queue
        await b.close()
        with pytest.raises(BatcherClosed):
            await b.submit(99, same)
        return [p.result() for p in pending]

    assert _run(fn, 2, 0.0, go) == [i * 10 for i in range(6)]


def test_max_size_and_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"), ThreadPoolExecutor(1) as pool:
        MicroBatcher(Recorder(), pool, 0, 0.0)
    with pytest.raises(ValueError, match="at least 1"), ThreadPoolExecutor(1) as pool:
        MicroBatcher(Recorder(), pool, 1, 0.0, concurrency=0)


def test_submit_prepares_and_encodes_in_one_job_on_the_encoder_thread() -> None:
    fn = Recorder()
    prepared_on: list[str] = []

    def prepare(raw: str) -> int:
        prepared_on.append(threading.current_thread().name)
        return int(raw)

    async def go(b: MicroBatcher[int, int]) -> list[int]:
        return [await b.submit("3", prepare), await b.submit("4", prepare)]

    assert _run(fn, 8, 0.0, go) == [30, 40]
    assert fn.sizes == [1, 1]
    assert prepared_on == ["enc_0", "enc_0"] and fn.threads == {"enc_0"}


@pytest.mark.parametrize("concurrency", [1, 2])
def test_submit_under_load_batches_and_prepares_where_the_lanes_say(concurrency: int) -> None:
    """One lane, busy: prepare in worker threads so that it never waits for decoding. Several
    lanes: prepare in the batch's job, one busy thread per lane."""
    gate = threading.Event()
    fn = Recorder(gate=gate)
    prepared_on: list[str] = []

    def prepare(raw: str) -> int:
        prepared_on.append(threading.current_thread().name)
        return int(raw)

    async def main() -> list[int]:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="enc") as pool:
            b: MicroBatcher[int, int] = MicroBatcher(fn, pool, 8, 0.0, concurrency=concurrency)
            try:
                first = asyncio.ensure_future(b.submit(0, same))  # keeps a lane busy
                await until(lambda: fn.sizes == [1])
                rest = asyncio.gather(*(b.submit(str(i), prepare) for i in range(1, 7)))
                if concurrency == 1:  # the lane is busy: the six wait in the queue
                    await until(lambda: b._queue.qsize() == 6)
                else:  # the other lane takes them at once, as one batch
                    await until(lambda: len(fn.sizes) == 2)
                gate.set()
                return [await first, *await rest]
            finally:
                gate.set()
                await b.close()

    assert asyncio.run(main()) == [i * 10 for i in range(7)]
    assert fn.sizes == [1, 6]
    in_job = [t.startswith("enc") for t in prepared_on]
    assert in_job == [concurrency > 1] * 6


def test_submit_prepare_errors_reach_only_their_caller() -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)

    async def go(b: MicroBatcher[int, int]) -> list[object]:
        first = asyncio.ensure_future(b.submit(0, same))
        await until(lambda: fn.sizes == [1])  # the only lane is busy
        # "x" fails like an undecodable upload, in the same batch as "1" and "2".
        out = asyncio.gather(*(b.submit(r, int) for r in ("1", "x", "2")), return_exceptions=True)
        await until(lambda: b._queue.qsize() == 2)
        gate.set()
        return [await first, *await out]

    try:
        out = _run(fn, 8, 0.0, go)
    finally:
        gate.set()
    assert out[:2] == [0, 10] and out[3] == 20 and isinstance(out[2], ValueError)
    assert fn.sizes == [1, 2]


def test_concurrency_runs_that_many_batches_at_once() -> None:
    active, peak = 0, 0
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=30)  # a call returns only once another one runs too

    def fn(items: Sequence[int]) -> list[int]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        both.wait()
        with lock:
            active -= 1
        return [i * 10 for i in items]

    async def main() -> list[int]:
        with ThreadPoolExecutor(4, thread_name_prefix="enc") as pool:
            b: MicroBatcher[int, int] = MicroBatcher(fn, pool, 2, 0.0, concurrency=2)
            try:
                return list(await asyncio.gather(*(b.submit(i, same) for i in range(12))))
            finally:
                await b.close()

    assert asyncio.run(main()) == [i * 10 for i in range(12)]
    assert peak == 2, "two lanes, never more"
