"""GET /payments/service-health behind one fixed window shared by every caller (SPEC.md §3).

As the official (.NET FixedWindowRateLimiter, PermitLimit 1, QueueLimit 2): one answer per
window; two callers more wait, the oldest taking the next window's permit; the rest get 429.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.support.processes import call
from tests.support.wire import pipelined

WINDOW = 0.3
# Timers may fire a hair before the loop's own clock says the window opened.
SLACK = 0.01


async def get_health_concurrently(url: str, count: int) -> list[tuple[int, float, dict]]:
    """`count` calls at once on separate connections: (status, seconds to answer, headers)."""
    started = time.monotonic()

    async def get(session: aiohttp.ClientSession) -> tuple[int, float, dict]:
        async with session.get(f"{url}/payments/service-health") as answer:
            await answer.read()
            return answer.status, time.monotonic() - started, dict(answer.headers)

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(get(session) for _ in range(count)))


def test_one_answer_per_window_two_waiters_the_rest_429(processor_factory):
    processor = processor_factory(rate_limit_seconds=WINDOW)
    answers = asyncio.run(get_health_concurrently(processor.url, 6))
    assert sorted(status for status, _, _ in answers) == [200, 200, 200, 429, 429, 429], answers
    answered = sorted(elapsed for status, elapsed, _ in answers if status == 200)
    refused = [(elapsed, headers) for status, elapsed, headers in answers if status == 429]
    # The first window opened with the first call, after `started`: each waiter's window
    # opened a whole window after the one before.
    assert answered[1] >= WINDOW - SLACK
    assert answered[2] >= 2 * WINDOW - SLACK
    for elapsed, headers in refused:
        assert elapsed < answered[1]  # refused at once, not kept for a window
        assert int(headers["Retry-After"]) >= 1


def test_window_holds_for_calls_read_in_one_go(processor_factory):
    processor = processor_factory(rate_limit_seconds=0.1)
    request = b"GET /payments/service-health HTTP/1.1\r\nHost: x\r\n\r\n"
    # Answers leave in order: the fourth, refused at once, waits behind the two waiters.
    assert pipelined(processor.port, [request] * 4) == [200, 200, 200, 429]


def test_health_reports_the_current_delay_and_failure(processor_factory):
    processor = processor_factory(rate_limit_seconds=WINDOW)
    started = time.monotonic()
    first = call(processor.port, "GET", "/payments/service-health")
    assert first.status == 200
    assert first.json() == {"failing": False, "minResponseTime": 0}
    processor.set_delay(37)
    processor.set_failure(True)
    second = call(processor.port, "GET", "/payments/service-health")  # waits for the next window
    assert time.monotonic() - started >= WINDOW - SLACK
    assert second.status == 200
    assert second.json() == {"failing": True, "minResponseTime": 37}


def test_health_calls_are_counted(processor_factory):
    processor = processor_factory(rate_limit_seconds=60)
    assert call(processor.port, "GET", "/payments/service-health").status == 200
    for _ in range(2):  # these two wait for the next window, beyond the client's patience
        with pytest.raises(TimeoutError):
            call(processor.port, "GET", "/payments/service-health", timeout=0.3)
    assert call(processor.port, "GET", "/payments/service-health").status == 429
    counts = processor.admin("GET", "/admin/health-calls").json()
    assert counts == {"answered": 1, "refused": 1}
