"""Timestamps as every record in the storage writes them: UTC, ISO 8601, whole seconds."""

from __future__ import annotations

import datetime as dt


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
