"""Timestamps on the wire: ISO-8601 UTC with ``Z`` (the `together` CLI parses only that form)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(dt: datetime | None) -> str | None:
    """``2026-12-01T16:20:38.123456Z`` (isoformat, not strftime: a retrieve formats dozens)."""
    if dt is None:
        return None
    if dt.tzinfo is not UTC:
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds")[:26] + "Z"


def unix(dt: datetime) -> int:
    return int(dt.timestamp())
