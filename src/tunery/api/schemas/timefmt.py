"""Timestamps on the wire: ISO-8601 UTC with ``Z`` (the `together` CLI parses only that form)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unix(dt: datetime) -> int:
    return int(dt.timestamp())
