"""Error messages that name a client's value without echoing all of it."""

from __future__ import annotations


def quote(value: str, limit: int = 64) -> str:
    """``repr(value)``, cut to its first ``limit`` characters: error messages never echo a
    client's whole (possibly megabytes long) value back."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
