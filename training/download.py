"""``ctl download``: fetch the images of a released STL pairs file into a data directory.

The STL image URLs are often dead, so every failure is counted and recorded, never fatal.
A rerun skips what is already on disk and decodes, so an interrupted download resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from index.fetch import FetchError, check_image, fetch_once, retrier
from index.store import PRODUCT_ID_PATTERN
from runtime.atomic import write_bytes
from runtime.options import Options, option
from runtime.progress import Progress
from training.stl import load_pairs

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://i.pinimg.com/400x"
FAILURES_FILE = "download-failures.jsonl"
SIGNATURE = re.compile(PRODUCT_ID_PATTERN)
"""STL signatures and shops' product ids alike: the project's one id format."""


@dataclass(frozen=True)
class Job:
    """One image to fetch into ``images/KIND/SIG.jpg``: ``kind`` is ``scenes`` or ``products``;
    ``url`` (http(s) or file) where it is, by default the STL URL of ``sig``."""

    kind: str
    sig: str
    url: str | None = None

    def source(self, base_url: str) -> str:
        return self.url or image_url(base_url, self.sig)


@dataclass(frozen=True)
class Outcome:
    job: Job
    status: str  # ok | skipped | failed
    reason: str = ""
    detail: str = ""
    attempts: int = 0


def image_url(base_url: str, sig: str) -> str:
    """The STL URL pattern: ``{base}/{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}.jpg``."""
    return f"{base_url.rstrip('/')}/{sig[0:2]}/{sig[2:4]}/{sig[4:6]}/{sig}.jpg"


def image_path(out: Path, job: Job) -> Path:
    return out / "images" / job.kind / f"{job.sig}.jpg"


@dataclass(frozen=True)
class Fetcher:
    """How to fetch: where from, how patiently, and where to."""

    out: Path
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 1.0

    def run(self, job: Job) -> Outcome:
        """Fetch one image unless a valid copy is present; never raises for a bad download."""
        if not SIGNATURE.fullmatch(job.sig):  # it becomes a path: no "/" or ".." in it
            return Outcome(job, "failed", "bad_signature", repr(job.sig))
        dest = image_path(self.out, job)
        if dest.is_file():  # a copy on disk that decodes is kept: a rerun skips it
            with contextlib.suppress(OSError, FetchError):
                check_image(dest.read_bytes())
                return Outcome(job, "skipped")
        retrying = retrier(self.retries, self.backoff)
        try:
            retrying(self._fetch, job.source(self.base_url), dest)
        except FetchError as exc:
            attempts = retrying.statistics["attempt_number"]
            return Outcome(job, "failed", exc.reason, exc.detail, attempts)
        return Outcome(job, "ok", attempts=retrying.statistics["attempt_number"])

    def _fetch(self, url: str, dest: Path) -> None:
        data = fetch_once(url, self.timeout)
        check_image(data)
        write_bytes(dest, data)


def jobs_for(pairs_file: Path, limit: int | None = None) -> list[Job]:
    """The distinct scenes and products of the first ``limit`` pairs, in file order."""
    pairs = load_pairs(pairs_file)[:limit]
    scenes = dict.fromkeys(p.scene for p in pairs)
    products = dict.fromkeys(p.product for p in pairs)
    return [Job("scenes", s) for s in scenes] + [Job("products", p) for p in products]


def download(
    jobs: Sequence[Job], fetcher: Fetcher, workers: int = 16, log_every_s: float = 10.0
) -> tuple[Counter[str], list[Outcome]]:
    """Run ``jobs`` concurrently; return the count of each status and the failed outcomes,
    sorted."""
    counts: Counter[str] = Counter()
    failures: list[Outcome] = []
    started = last_log = time.monotonic()
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        Progress(log, len(jobs), "download", "file") as progress,
    ):
        futures = [pool.submit(fetcher.run, job) for job in jobs]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                counts[outcome.status] += 1
                if outcome.status == "failed":
                    failures.append(outcome)
                now, done = time.monotonic(), counts.total()
                if now - last_log < log_every_s and done < len(jobs):
                    progress.update(1)
                    continue
                last_log = now
                progress.update(
                    1,
                    "%d/%d files (ok %d, skipped %d, failed %d), %.1f files/s",
                    done,
                    len(jobs),
                    counts["ok"],
                    counts["skipped"],
                    counts["failed"],
                    done / max(now - started, 1e-9),
                )
        except BaseException:  # Ctrl-C: stop now, a rerun resumes
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    failures.sort(key=lambda o: (o.job.kind, o.job.sig))
    return counts, failures


def render_summary(counts: Counter[str], failures: Iterable[Outcome]) -> str:
    """The counts of one run, printed at the end."""
    lines = [
        f"download: {counts.total()} files: ok {counts['ok']}, skipped {counts['skipped']} "
        f"(already present), failed {counts['failed']}"
    ]
    reasons = Counter(o.reason for o in failures)
    lines += [f"  failed {reason}: {n}" for reason, n in sorted(reasons.items())]
    return "\n".join(lines)


def write_failures(path: Path, failures: Iterable[Outcome], base_url: str) -> None:
    lines = [
        json.dumps(
            {
                "kind": o.job.kind,
                "sig": o.job.sig,
                "url": o.job.source(base_url),
                "reason": o.reason,
                "detail": o.detail,
                "attempts": o.attempts,
            }
        )
        + "\n"
        for o in failures
    ]
    write_bytes(path, "".join(lines).encode("utf-8"))


def copy_into(src: Path, dest: Path) -> None:
    """Copy a metadata file into the data directory (atomically; a no-op onto itself)."""
    if dest.exists() and dest.samefile(src):
        return
    write_bytes(dest, src.read_bytes())


def infer_domain(pairs_file: Path) -> str:
    return "home" if pairs_file.name.lower().startswith("home") else "fashion"


class FetchOptions(Options):
    """How to fetch: the options ``ctl download`` and ``ctl data import`` share."""

    workers: int = option(16, "concurrent fetches", ge=1)
    timeout: float = option(10.0, "seconds per request", gt=0)
    retries: int = option(3, "retries after the first try", ge=0)
    backoff: float = option(1.0, "first retry delay, doubling, plus jitter", ge=0)


class DownloadOptions(FetchOptions, prog="ctl download"):
    """Fetch the images of an STL pairs file."""

    pairs: Path = option(help="STL pairs (JSON lines)")
    categories: Path = option(help="product -> category JSON")
    out: Path = option(help="data directory to fill")
    domain: str | None = option(None, "default: from --pairs name", choices=("fashion", "home"))
    base_url: str = option(DEFAULT_BASE_URL, "where the STL images are")
    limit: int | None = option(None, "only the first N pairs", ge=1)
    log_every: float = option(10.0, "progress every S seconds")


def main(argv: Sequence[str]) -> int:
    args = DownloadOptions.parse(argv)
    for flag, path in (("--pairs", args.pairs), ("--categories", args.categories)):
        if not path.is_file():
            log.error("%s %s: no such file", flag, path)
            return 2
    domain = args.domain or infer_domain(args.pairs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    copy_into(args.pairs, out / f"{domain}.json")
    copy_into(args.categories, out / f"{domain}-cat.json")

    jobs = jobs_for(args.pairs, args.limit)
    log.info("%d images to check or fetch into %s (domain %s)", len(jobs), out, domain)
    fetcher = Fetcher(out, args.base_url, args.timeout, args.retries, args.backoff)
    counts, failures = download(jobs, fetcher, args.workers, args.log_every)
    failures_path = out / FAILURES_FILE
    write_failures(failures_path, failures, args.base_url)
    print(render_summary(counts, failures))
    if failures:
        print(f"failures listed in {failures_path}")
    return 0
