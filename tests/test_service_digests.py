"""The digest memo: always the sha256 of the bytes given, bounded, used by every upload route."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from service_support import post_scene, scene, serve, settings_for, tiny_artifacts

from service.digests import DigestMemo
from service.metrics import Metrics


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_gives_the_sha256_and_remembers_it() -> None:
    metrics = Metrics()
    memo = DigestMemo(1 << 20, metrics)
    photos = [os.urandom(n) for n in (1, 100, 5000)]
    for _ in range(3):
        assert [memo.sha256(p) for p in photos] == [_sha(p) for p in photos]
    assert len(memo) == 3 and memo.held_bytes == 5101
    assert metrics.cache_misses.value("digest") == 3
    assert metrics.cache_hits.value("digest") == 6


def test_a_fingerprint_collision_is_not_a_hit() -> None:
    """Bytes are compared before a remembered sha256 is reused."""
    metrics = Metrics()
    memo = DigestMemo(1 << 20, metrics, fingerprint=lambda data: b"always the same")
    a, b = b"first photo", b"second photo"
    assert [memo.sha256(x) for x in (a, b, a, a)] == [_sha(a), _sha(b), _sha(a), _sha(a)]
    assert metrics.cache_hits.value("digest") == 1  # the last one only
    assert len(memo) == 1 and memo.held_bytes == len(a)


def test_holds_at_most_its_bytes_and_drops_the_least_recent() -> None:
    metrics = Metrics()
    memo = DigestMemo(1000, metrics)
    photos = [bytes([n]) * 200 for n in range(8)]
    memo.sha256(photos[0])
    for p in photos[1:]:
        memo.sha256(photos[0])  # kept fresh, so never the one dropped
        memo.sha256(p)
    assert len(memo) == 5 and memo.held_bytes == 1000
    hits = metrics.cache_hits.value("digest")
    assert memo.sha256(photos[0]) == _sha(photos[0])
    assert memo.sha256(photos[1]) == _sha(photos[1])  # dropped long ago: hashed again
    assert metrics.cache_hits.value("digest") == hits + 1


def test_big_uploads_and_a_zero_budget_keep_nothing() -> None:
    big = os.urandom(300)
    memo = DigestMemo(1000)
    assert memo.sha256(big) == _sha(big) and len(memo) == 0  # over a quarter of the budget
    off = DigestMemo(0)
    assert off.sha256(b"x") == _sha(b"x") and off.sha256(b"") == _sha(b"") and len(off) == 0


def _digest_hits(text: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith('ctl_cache_hits_total{kind="digest"}')]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_every_upload_route_uses_it(stl_dir: Path) -> None:
    """The fast lane and FastAPI's routes report the photo's sha256 and share one memo."""
    data = scene(stl_dir, 21)
    with serve(settings_for(tiny_artifacts(stl_dir), stl_dir)) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        before = _digest_hits(client.get("/metrics").text)
        lane = post_scene(client, data, category)
        routed = client.post(
            "/complete-the-look/all",
            files={"image": ("s.jpg", data, "image/jpeg")},
            data={"categories": category},
        )
        assert lane.status_code == routed.status_code == 200
        assert lane.json()["scene_sha256"] == routed.json()["scene_sha256"] == _sha(data)
        assert _digest_hits(client.get("/metrics").text) == before + 1
        assert client.app.state.digests.held_bytes >= len(data)  # type: ignore[attr-defined]
