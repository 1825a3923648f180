"""The Prometheus histogram: cumulative buckets, +Inf, sum and count per label set."""

from __future__ import annotations

from service.metrics import Histogram


def test_histogram_renders_cumulative_buckets() -> None:
    h = Histogram("t_seconds", "test", buckets=(0.1, 1.0), labels=("route",))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value, "/a")
    h.observe(2.0, "/b")
    lines = h.render()
    assert 't_seconds_bucket{route="/a",le="0.1"} 2' in lines  # 0.05 and 0.1 (le is <=)
    assert 't_seconds_bucket{route="/a",le="1"} 3' in lines
    assert 't_seconds_bucket{route="/a",le="+Inf"} 4' in lines
    assert 't_seconds_count{route="/a"} 4' in lines
    assert 't_seconds_sum{route="/a"} 3.65' in lines
    assert 't_seconds_bucket{route="/b",le="1"} 0' in lines
    assert 't_seconds_bucket{route="/b",le="+Inf"} 1' in lines
