"""One budget for the upload bytes held in memory at once, across all requests.

Multipart parsing spools big files to disk, but a request then reads its file into memory to
hash, decode and encode it. Each request alone is bounded (``max_upload_bytes``, and a batch
reads its files a few at a time), yet nothing bounded them together: four batches of 32 x 10 MB
at once took the process from 0.7 to 2.2 GB. A request now takes its file's size from this
budget before reading it and gives it back when it is done; one that finds no room waits (in
arrival order) up to ``wait_s``, then gets a 503 with ``Retry-After``.

A second budget of the same kind holds decoded pixels (``CTL_PIXEL_BUDGET_BYTES``): a 131 KB
PNG of 6000x6600 decodes into 160 MB, so bounding the upload bytes alone left 32 such requests
free to take the process from 0.3 to 5 GB.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException, status


class UploadBudget:
    """A byte count shared by all requests of one event loop (no locks needed)."""

    def __init__(self, capacity: int, wait_s: float, what: str = "upload") -> None:
        if capacity < 1:
            raise ValueError(f"the {what} budget must be at least 1 byte, got {capacity}")
        self.capacity, self.wait_s, self.what = capacity, wait_s, what
        self.held = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def try_take(self, nbytes: int) -> bool:
        """Take ``nbytes`` now if they fit and nobody waits before us; else take nothing."""
        if self._waiters or self.held + nbytes > self.capacity:
            return False
        self.held += nbytes
        return True

    def give(self, nbytes: int) -> None:
        """Return ``nbytes`` and wake the waiters that now fit, oldest first."""
        self.held -= nbytes
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():  # timed out or cancelled
                self._waiters.pop(0)
                continue
            if self.held + size > self.capacity:
                break
            self._waiters.pop(0)
            self.held += size
            future.set_result(None)

    async def take(self, nbytes: int) -> None:
        """Take ``nbytes``, waiting up to ``wait_s`` for room (503 after that)."""
        nbytes = min(nbytes, self.capacity)  # one request bigger than all of it waits for all
        if self.try_take(nbytes):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.wait_s)
        except BaseException as exc:
            granted = future.done() and not future.cancelled()
            future.cancel()
            if entry in self._waiters:
                self._waiters.remove(entry)
            # Ours back if granted as the wait ended; either way those behind us may fit now.
            self.give(nbytes if granted else 0)
            if isinstance(exc, TimeoutError):
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    f"too many uploads in flight: the {self.what} memory budget is spent; "
                    "try again shortly",
                    headers={"Retry-After": str(max(1, math.ceil(self.wait_s)))},
                ) from None
            raise

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """``nbytes`` of the budget for the block (given back however it ends)."""
        nbytes = min(nbytes, self.capacity)  # as take() counts it
        await self.take(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)
