"""Micro-batching: concurrent requests share encoder calls, run off the event loop.

One worker task per batcher takes the first waiting item, gathers more for at most
``max_wait_s`` (or until ``max_size``), and runs the batch as one job in the given executor:
the job prepares each item (decodes an upload; a failure fails that item only), then calls
``fn`` once on the prepared ones. Up to ``concurrency`` jobs run at a time (the encoder's
lanes); while they run, new items queue up, so under load batches fill without any added wait.
With several lanes, preparing inside the job keeps exactly one busy thread per lane: decoding
in extra threads beside the encoder made both slower on a 2-core machine. With one lane (a GPU,
or one core), items that arrive while it is busy are prepared in worker threads instead, so
that the encoder never waits for decoding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
U = TypeVar("U")


class BatcherClosed(RuntimeError):
    """Raised to callers that submit after :meth:`MicroBatcher.close`."""


class _Failed:
    """An item whose preparation raised: its caller gets the exception, the batch goes on."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _identity(item: T) -> T:
    return item


_Entry = tuple[Any, Callable[[Any], Any], "asyncio.Future[Any]"]


class MicroBatcher(Generic[T, R]):
    """Batch calls of ``fn(items) -> results`` (same length, same order)."""

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        executor: Executor,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if max_size < 1 or concurrency < 1:
            raise ValueError(
                f"max batch size and concurrency must be at least 1, got {max_size}, {concurrency}"
            )
        self._fn, self._executor = fn, executor
        self.max_size, self._max_wait = max_size, max(0.0, max_wait_s)  # items per call at most
        self._on_batch = on_batch
        self._concurrency = concurrency
        # ``None`` is the close sentinel: everything queued before it is still processed.
        self._queue: asyncio.Queue[_Entry | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._running = 0  # jobs in the executor

    async def submit(self, raw: U, prepare: Callable[[U], T]) -> R:
        """``fn([prepare(raw)])[0]``, batched with other requests when there are any (the
        exceptions of ``fn`` are re-raised here).

        ``prepare`` runs in the batch's job, or in a worker thread when the only lane is busy;
        its exceptions (a bad upload) reach this caller only.
        """
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        entry: tuple[Any, Callable[[Any], Any]] = (raw, prepare)
        if self._concurrency == 1 and self._running:
            entry = (await asyncio.to_thread(prepare, raw), _identity)
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((*entry, future))
        return await future

    def _job(self, entries: Sequence[tuple[Any, Callable[[Any], T]]]) -> tuple[list[Any], float]:
        """On the executor: prepare each item, run ``fn`` once on those that prepared; the
        results in order (a :class:`_Failed` for each failed item) and ``fn``'s seconds."""
        prepared: list[Any] = []
        for raw, prepare in entries:
            try:
                prepared.append(prepare(raw))
            except Exception as exc:
                prepared.append(_Failed(exc))
        good = [p for p in prepared if not isinstance(p, _Failed)]
        start = time.perf_counter()
        results = list(self._fn(good)) if good else []
        seconds = time.perf_counter() - start
        if len(results) != len(good):
            raise RuntimeError(f"batch of {len(good)} gave {len(results)} results")
        out = iter(results)
        return [p if isinstance(p, _Failed) else next(out) for p in prepared], seconds

    async def _gather(self) -> tuple[list[_Entry], bool]:
        """The next batch, and whether the close sentinel was reached."""
        first = await self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while len(batch) < self.max_size:
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
        """Gather a batch whenever a lane is free and run it; at the close, wait for all."""
        lanes = asyncio.Semaphore(self._concurrency)
        running: set[asyncio.Task[None]] = set()
        done = False
        while not done:
            await lanes.acquire()
            batch, done = await self._gather()
            live = [entry for entry in batch if not entry[2].done()]
            if not live:
                lanes.release()
                continue
            task = asyncio.create_task(self._process(live))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: lanes.release())
        await asyncio.gather(*running)

    async def _process(self, live: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            results, seconds = await loop.run_in_executor(
                self._executor, self._job, [(raw, prepare) for raw, prepare, _ in live]
            )
        except Exception as exc:
            log.exception("encoder batch of %d failed", len(live))
            for *_, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._running -= 1
        encoded = sum(not isinstance(r, _Failed) for r in results)
        if self._on_batch is not None and encoded:
            self._on_batch(encoded, seconds)
        for (*_, fut), result in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, _Failed):
                fut.set_exception(result.exc)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        """Refuse new items, finish every queued and running one, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
