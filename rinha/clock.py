"""Timestamps as the contest writes them: UTC, exactly three decimals, a trailing Z.

The processors filter on `requestedAt` at full precision and the test's windows end on whole
milliseconds (SPEC.md §3), so the service stamps, stores and compares whole milliseconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_second_cache: tuple[int, str] = (-1, "")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_ms(ms: int) -> str:
    """`2025-07-10T12:34:56.789Z` for epoch milliseconds; the date part is cached per second."""
    global _second_cache
    seconds, millis = divmod(ms, 1000)
    if _second_cache[0] != seconds:
        _second_cache = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{_second_cache[1]}.{millis:03d}Z"


def parse_us(text: str) -> int:
    """Epoch microseconds of an ISO-8601 timestamp; one without an offset is taken as UTC.

    Raises ValueError for anything else.
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
