"""The one place evalkit reads the clock; everything else is handed the time."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Current UTC time as fixed-width ISO 8601 text (stored and hashed as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
