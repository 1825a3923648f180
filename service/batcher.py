"""Micro-batching: concurrent requests share one encoder call, run off the event loop.

One worker task per batcher takes the first waiting item, gathers more for at most
``max_wait_s`` (or until ``max_size``), and runs the batch in the given executor. While a
batch runs, new items queue up, so under load batches fill without any added wait.

:meth:`MicroBatcher.submit_raw` also takes the per-item preparation (decoding an upload): when
the batcher is idle, preparation and the encoder run in one executor job, which saves a round
trip through a worker thread for a lone request; under load, preparation runs in worker threads
in parallel and the prepared items are batched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
U = TypeVar("U")


class BatcherClosed(RuntimeError):
    """Raised to callers that submit after :meth:`MicroBatcher.close`."""


class MicroBatcher(Generic[T, R]):
    """Batch calls of ``fn(items) -> results`` (same length, same order)."""

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        executor: Executor,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max batch size must be at least 1, got {max_size}")
        self._fn, self._executor = fn, executor
        self._max_size, self._max_wait = max_size, max(0.0, max_wait_s)
        self._on_batch = on_batch
        # ``None`` is the close sentinel: everything queued before it is still processed.
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._running = 0  # encoder jobs submitted to the executor and not finished

    @property
    def idle(self) -> bool:
        """Nothing queued and no encoder job running."""
        return self._running == 0 and self._queue.empty()

    async def submit_raw(self, raw: U, prepare: Callable[[U], T]) -> R:
        """``fn([prepare(raw)])[0]``, batched with other requests when there are any.

        Exceptions of ``prepare`` (a bad upload) reach this caller only.
        """
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        if not self.idle:
            return await self.submit(await asyncio.to_thread(prepare, raw))

        def alone() -> tuple[Sequence[R], float]:
            return self._call([prepare(raw)])

        self._running += 1
        try:
            results, seconds = await asyncio.get_running_loop().run_in_executor(
                self._executor, alone
            )
        finally:
            self._running -= 1
        if self._on_batch is not None:
            self._on_batch(1, seconds)
        return results[0]

    def _call(self, items: Sequence[T]) -> tuple[Sequence[R], float]:
        """``fn(items)`` on the executor's thread, checked, and how long it took there."""
        start = time.perf_counter()
        results = self._fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
        return results, time.perf_counter() - start

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (exceptions of ``fn`` are re-raised here)."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _gather(self) -> tuple[list[tuple[T, asyncio.Future[R]]], bool]:
        """The next batch, and whether the close sentinel was reached."""
        first = await self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while len(batch) < self._max_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                entry = self._queue.get_nowait()
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    async def _run(self) -> None:
        done = False
        while not done:
            batch, done = await self._gather()
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if live:
                await self._process(live)

    async def _process(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            results, seconds = await loop.run_in_executor(
                self._executor, self._call, [item for item, _ in live]
            )
        except Exception as exc:
            log.exception("encoder batch of %d failed", len(live))
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._running -= 1
        if self._on_batch is not None:
            self._on_batch(len(live), seconds)
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def close(self) -> None:
        """Refuse new items, finish every queued and running one, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
