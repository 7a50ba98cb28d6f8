"""Our summary against the processors' own (SPEC.md §4): one window as the contest's test
audits it, the totals once nothing is pending, and each payment stored exactly once."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.support.clients import Client

# The test's own audit window ends 2 s (final) or 1.5 s (preview) before now.
AUDIT_LAG = timedelta(seconds=1.5)
ADMIN = {"X-Rinha-Token": "123"}
TOTALS = ("totalRequests", "totalAmount")
NAMES = ("default", "fallback")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def audit_once(
    session: aiohttp.ClientSession,
    base: str,
    processors: Any,
    start: datetime,
    lag: timedelta = AUDIT_LAG,
) -> list[str]:
    """Our summary at `base` (a replica's URL) against the processors', over a window from
    `start` to `lag` ago: each difference as a line."""
    window = {"from": iso(start), "to": iso(datetime.now(UTC) - lag)}
    async with session.get(f"{base}/payments-summary", params=window) as r:
        if r.status != 200:
            return [f"{window}: summary answered {r.status}"]  # the test scores it as zeros
        ours = await r.json()
    differences = []
    for name in NAMES:
        url = getattr(processors, name).url + "/admin/payments-summary"
        async with session.get(url, params=window, headers=ADMIN) as answer:
            theirs = await answer.json()
        for key in TOTALS:
            if ours[name][key] != theirs[key]:
                differences.append(
                    f"{window} {name} {key}: ours {ours[name][key]} theirs {theirs[key]}"
                )
    return differences


def assert_exact(
    clients: Client | Iterable[Client], processors: Any, timeout: float = 30.0
) -> dict[str, dict[str, Any]]:
    """Once nothing is pending, every client's summary equals the processors' own: their
    totals per processor."""
    asked = [clients] if isinstance(clients, Client) else list(clients)
    for client in asked:
        client.wait_settled(timeout)
    theirs = {
        name: {key: getattr(processors, name).summary()[key] for key in TOTALS} for name in NAMES
    }
    for client in asked:
        ours = client.summary()
        assert {name: {key: ours[name][key] for key in TOTALS} for name in theirs} == theirs, (
            client.url
        )
    return theirs


def assert_processed_once(
    ids: Iterable[str], processors: Any, unanswered: Iterable[str] = ()
) -> None:
    """Every id in `ids` stored by exactly one processor, each of `unanswered` (sent, and
    never answered: its replica may have accepted it before it died) by one at most, and
    nothing else stored."""
    ids = set(ids)

    def found(correlation_id: str) -> list[str]:
        return [name for name in NAMES if getattr(processors, name).has(correlation_id)]

    for correlation_id in ids:
        assert len(found(correlation_id)) == 1, (correlation_id, found(correlation_id))
    also = 0
    for correlation_id in set(unanswered) - ids:
        assert len(found(correlation_id)) <= 1, (correlation_id, found(correlation_id))
        also += len(found(correlation_id))
    stored = sum(getattr(processors, name).summary()["totalRequests"] for name in NAMES)
    assert stored == len(ids) + also
