"""Fetching images over HTTP(S) with retries: ``ctl download`` (the STL images) and
``ctl catalog import`` (a shop's image URLs) use the same rules.

A failure is a :class:`FetchError` with a short reason; client errors other than timeouts and
rate limits are final, the rest are retried with exponential backoff and jitter (tenacity).
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.request

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from runtime.decode import DecodeError, decode_image

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 1024 * 1024
"""No catalog or STL image comes near this; a bigger answer is not an image we want."""
_NO_RETRY_STATUS = frozenset(range(400, 500)) - {408, 425, 429}
"""Client errors other than these are final: asking again gives the same answer."""


class FetchError(Exception):
    """A failed download, with a short ``reason`` used to group failures in the summary."""

    def __init__(self, reason: str, detail: str = "", retry: bool = True) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retry = retry


def check_image(data: bytes) -> None:
    """Raise ``FetchError`` unless ``data`` decodes fully (header and pixels) by the decoder
    that training and serving use (``runtime.decode``)."""
    try:
        decode_image(data)
    except DecodeError as exc:
        raise FetchError("not_an_image", str(exc), retry=False) from exc


def fetch_once(url: str, timeout: float) -> bytes:
    """GET ``url``; raise ``FetchError`` with a reason on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": "complete-the-look/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: bytes = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise FetchError(
            f"http_{exc.code}", str(exc.reason), retry=exc.code not in _NO_RETRY_STATUS
        ) from exc
    except TimeoutError as exc:
        raise FetchError("timeout", str(exc)) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise FetchError("timeout", str(exc.reason)) from exc
        if url.startswith("file:") and isinstance(exc.reason, OSError):
            raise FetchError("no_such_file", str(exc.reason), retry=False) from exc
        raise FetchError("connection_error", str(exc.reason)) from exc
    except (http.client.HTTPException, OSError) as exc:
        raise FetchError("connection_error", f"{type(exc).__name__}: {exc}") from exc
    if len(data) > MAX_BYTES:
        raise FetchError("too_large", f"over {MAX_BYTES} bytes", retry=False)
    if not data:
        raise FetchError("empty_response")
    return data


def retrier(retries: int, backoff: float) -> Retrying:
    """Up to ``retries`` more attempts after a retryable :class:`FetchError`: exponential
    backoff from ``backoff`` s, plus up to ``backoff`` s of jitter so that workers that failed
    together do not all ask again at the same moment."""
    return Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=backoff) + wait_random(0, backoff),
        retry=retry_if_exception(lambda e: isinstance(e, FetchError) and e.retry),
        before_sleep=before_sleep_log(log, logging.DEBUG),
        reraise=True,
    )


def fetch(url: str, timeout: float = 10.0, retries: int = 3, backoff: float = 1.0) -> bytes:
    """The bytes at ``url``, retried as :func:`retrier` says; FetchError when it gives up."""
    data: bytes = retrier(retries, backoff)(fetch_once, url, timeout)
    return data
