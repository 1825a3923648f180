"""The sha256 of recent uploads, remembered so that a photo sent again is not hashed again.

A scene's identity (the key of its cached embedding and results) is the sha256 of its bytes. A
shop page that asks for shoes, then bags, then more of them sends the same photo each time, and
on a cache hit hashing it was the largest single cost: ~25 us of a ~100 us answer for a 37 KB
photo, ~3 ms for a 5 MB one. Recent uploads are found again by their xxh3-128 (~40x faster)
and compared byte for byte before their sha256 is reused: the identity stays sha256, and a
crafted xxh3 collision only costs its sender a sha256.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import xxhash

from service.metrics import Metrics


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DigestMemo:
    """An LRU of recent uploads and their sha256, holding at most ``max_bytes`` of uploads.

    An upload over a quarter of that is hashed but not kept (it would flush the others);
    ``max_bytes=0`` keeps nothing. Hits and misses are counted as the ``digest`` cache kind.
    """

    def __init__(
        self,
        max_bytes: int,
        metrics: Metrics | None = None,
        fingerprint: Callable[[bytes], bytes] = xxhash.xxh3_128_digest,
    ) -> None:
        self._max_bytes, self._max_item = max_bytes, max_bytes // 4
        self._metrics, self._fingerprint = metrics, fingerprint
        self._items: OrderedDict[bytes, tuple[bytes, str]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of uploads kept now."""
        return self._held

    def __len__(self) -> int:
        return len(self._items)

    def sha256(self, data: bytes) -> str:
        """The sha256 of ``data`` as hex, from the memo when these exact bytes are in it."""
        if not 0 < len(data) <= self._max_item:
            return sha256_hex(data)
        key = self._fingerprint(data)
        with self._lock:
            item = self._items.get(key)
            if item is not None and item[0] == data:
                self._items.move_to_end(key)
                self._count(hit=True)
                return item[1]
        digest = sha256_hex(data)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._held -= len(old[0])
            self._items[key] = (data, digest)
            self._held += len(data)
            while self._held > self._max_bytes:
                _, (dropped, _) = self._items.popitem(last=False)
                self._held -= len(dropped)
        self._count(hit=False)
        return digest

    def _count(self, hit: bool) -> None:
        if self._metrics is not None:
            (self._metrics.cache_hits if hit else self._metrics.cache_misses).inc("digest")
