"""The HTTP service's knobs (``CTL_*`` env vars), on top of the index's and the runtime's.

Those live in their layers (``index.config.IndexSettings``, ``runtime.config.RuntimeSettings``),
which this class extends; training has its own (``training.config``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from index.config import IndexSettings


class Settings(IndexSettings):
    """The HTTP service's knobs, with the index's and the runtime's it inherits."""

    # Service.
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = None
    redis_timeout_s: float = 0.05  # a command's reply (a cache must not slow answers down)
    # Opening a connection: rare with pooling, and under full CPU the loop itself can be slow
    # to see a connect complete (a burst of clients turned the cache off that way).
    redis_connect_timeout_s: float = Field(default=1.0, gt=0)
    # Entries of the in-process LRU; with Redis, of the one in front of it (0: Redis alone).
    cache_size: int = Field(default=2048, ge=0)
    cache_ttl_s: int = 24 * 3600
    admin_token: str | None = None
    # Upload bytes held in memory at once by all requests together (service/budget.py); a
    # request that finds no room waits up to upload_wait_s, then gets 503 + Retry-After.
    upload_budget_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    upload_wait_s: float = Field(default=10.0, ge=0)
    # Decoded pixels held at once by all requests together (the same kind of budget, the same
    # wait): a small PNG can decode into hundreds of MB.
    pixel_budget_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    max_batch_items: int = 32
    # Scenes per encoder call; 0: 4 when calls run on several CPU lanes (a lane's batch is
    # decoded and encoded on one core, so small batches spread the work; docs/performance.md),
    # 16 with one lane (a GPU, where bigger batches pay).
    batch_max_size: int = Field(default=0, ge=0)
    batch_max_wait_ms: float = 0.0  # 0: no added wait; batches fill while the encoder is busy
    # Encoder calls that may overlap under load, each on its own scene session with a share of
    # the cores (0: one per core, at most 4): overlapping single-threaded calls encode more
    # images/s than one call on all threads (docs/performance.md). CPU only; GPUs take one.
    encoder_lanes: int = Field(default=0, ge=0)
    # FAISS (OpenMP) threads per search. One query gains nothing from more, and waking idle
    # OpenMP threads for every request stole CPU from the encoder (docs/performance.md).
    search_threads: int = 1
    redis_prefix: str = "ctl:"
    # After a failed Redis call the cache is bypassed for redis_retry_min_s, doubling with
    # each failed retry up to redis_retry_s: one slow moment costs a fraction of a second.
    redis_retry_s: float = 5.0
    redis_retry_min_s: float = Field(default=0.1, gt=0)
    # How often each process looks for versions published by another replica or by `ctl index`
    # (service/follow.py); with Redis, announcements wake it at once. 0: Redis announcements only.
    follow_interval_s: float = Field(default=1.0, ge=0)
    samples_dir: Path | None = None  # sample scenes for the page; default data_dir/images/scenes
    samples_count: int = 8
    max_score_ids: int = 1000
    # FastAPI's own OpenTelemetry spans, metrics and logs, for a process that configures a
    # provider (e.g. under opentelemetry-instrument). Off, FastAPI would still look for a
    # provider on every request. /metrics (Prometheus) is there either way.
    opentelemetry: bool = False
    # Origins whose pages may call the API from a browser (CORS), e.g. '["https://shop.example"]'
    # or '["*"]'; empty (the default): no CORS headers, so only same-origin pages can.
    cors_origins: list[str] = Field(default_factory=list)
