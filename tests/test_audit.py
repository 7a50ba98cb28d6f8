"""The audit (SPEC.md §4): under a burst of payments while the default processor fails and
slows down, our summary equals the processors' own at every sampled moment and at the end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.service_fixtures import Service

PAYMENTS = 1500
SENDERS = 30
# The test's own audit window ends 2 s (final) or 1.5 s (preview) before now.
AUDIT_LAG = timedelta(seconds=1.5)
ADMIN = {"X-Rinha-Token": "123"}


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
    for name in ("default", "fallback"):
        url = getattr(processors, name).url + "/admin/payments-summary"
        async with session.get(url, params=window, headers=ADMIN) as answer:
            theirs = await answer.json()
        for key in ("totalRequests", "totalAmount"):
            if ours[name][key] != theirs[key]:
                differences.append(
                    f"{window} {name} {key}: ours {ours[name][key]} theirs {theirs[key]}"
                )
    return differences


async def run_burst(
    service: Service,
    processors: Any,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
    lag: timedelta = AUDIT_LAG,
) -> tuple[int, list[str], int]:
    """Payments from many senders while the default fails and slows down in turn, audited
    every 0.3 s over a window ending `lag` ago; `meanwhile` runs alongside."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted = 0
    differences: list[str] = []
    audits = 0
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def send(count: int) -> None:
            nonlocal accepted
            for _ in range(count):
                body = {"correlationId": str(uuid.uuid4()), "amount": 19.90}
                try:
                    async with session.post(
                        f"http://127.0.0.1:{service.port}/payments", json=body
                    ) as r:
                        accepted += r.status == 202
                except aiohttp.ServerDisconnectedError:
                    pass  # its replica was killed on the way: never answered 2xx
                await asyncio.sleep(0.02)

        async def stir() -> None:
            # Failing, slow, failing and slow, healthy: each for a moment, in a loop.
            stages = [(0, True), (100, False), (50, True), (0, False)]
            index = 0
            while not done.is_set():
                delay, failing = stages[index % len(stages)]
                for path, body in (("delay", {"delay": delay}), ("failure", {"failure": failing})):
                    url = f"{processors.default.url}/admin/configurations/{path}"
                    async with session.put(url, json=body, headers=ADMIN):
                        pass
                index += 1
                await asyncio.sleep(0.4)
            async with session.put(
                f"{processors.default.url}/admin/configurations/failure",
                json={"failure": False},
                headers=ADMIN,
            ):
                pass

        async def audit() -> None:
            nonlocal audits
            while not done.is_set():
                base = f"http://127.0.0.1:{service.port}"
                differences.extend(await audit_once(session, base, processors, start, lag))
                audits += 1
                await asyncio.sleep(0.3)

        stirring = asyncio.create_task(stir())
        auditing = asyncio.create_task(audit())
        sending = [send(PAYMENTS // SENDERS) for _ in range(SENDERS)]
        await asyncio.gather(*sending, *([meanwhile()] if meanwhile else []))
        await asyncio.sleep(lag.total_seconds())
        done.set()
        await asyncio.gather(stirring, auditing)
    return accepted, differences, audits


def test_summary_matches_processors_throughout_a_burst(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # Payments wait at most 0.3 s for a failing default, so both processors are used.
    service = service_factory("--max-hold", "0.3")
    accepted, differences, audits = asyncio.run(run_burst(service, fresh_processors))
    assert accepted == PAYMENTS
    assert audits >= 5
    assert differences == []
    final = service.wait_settled()
    default = fresh_processors.default.summary()
    fallback = fresh_processors.fallback.summary()
    assert default["totalRequests"] + fallback["totalRequests"] == PAYMENTS
    assert final["default"]["totalRequests"] == default["totalRequests"]
    assert final["fallback"]["totalRequests"] == fallback["totalRequests"]
    assert final["default"]["totalAmount"] == default["totalAmount"]
    assert final["fallback"]["totalAmount"] == fallback["totalAmount"]
    # Both were really used: the default failed part of the time.
    assert default["totalRequests"] > 0 and fallback["totalRequests"] > 0
