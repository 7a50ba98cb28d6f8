"""Payments sent as clients send them: many at once (`pay_concurrently`), or a burst while the
default processor fails and slows down in turn, audited as it goes (`burst`)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from tests.support.audit import ADMIN, AUDIT_LAG, audit_once

# Failing, slow, failing and slow, healthy: each for a moment, in a loop.
STAGES = [(0, True), (100, False), (50, True), (0, False)]
STAGE_SECONDS = 0.4


async def pay_concurrently(urls: str | Sequence[str], count: int, senders: int = 50) -> list[str]:
    """POST `count` fresh payments from `senders` concurrent clients, the i-th to the i-th
    of `urls` in turn; the ids answered 202."""
    bases = [urls] if isinstance(urls, str) else list(urls)
    indices = iter(range(count))
    accepted: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def sender() -> None:
            for index in indices:
                correlation_id = str(uuid.uuid4())
                body = {"correlationId": correlation_id, "amount": 19.90}
                url = f"{bases[index % len(bases)]}/payments"
                async with session.post(url, json=body) as answer:
                    if answer.status == 202:
                        accepted.append(correlation_id)

        await asyncio.gather(*(sender() for _ in range(min(senders, count))))
    return accepted


@dataclass
class Burst:
    accepted: set[str] = field(default_factory=set)  # ids answered 202 at least once
    unanswered: set[str] = field(default_factory=set)  # ids a POST got no answer for
    differences: list[str] = field(default_factory=list)  # every audit's, as lines
    audits: int = 0


async def burst(
    processors: Any,
    destinations: Callable[[int], list[str]],
    audited: Sequence[str],
    payments: int = 1500,
    senders: int = 30,
    meanwhile: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    lag: timedelta = AUDIT_LAG,
    audit_every: float = 0.3,
) -> Burst:
    """`payments` from `senders` clients, the i-th sent to every URL in `destinations(i)` at
    once (two replicas may receive one id), while the default fails and slows down in turn;
    each URL in `audited` audited every `audit_every` seconds over a window ending `lag` ago
    (one that does not answer, killed, is skipped). `meanwhile` runs alongside and may pause
    the senders and the default's changes with the event it is given."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    found = Burst()
    done = asyncio.Event()
    pause = asyncio.Event()
    indices = iter(range(payments))
    async with aiohttp.ClientSession() as session:

        async def post(base: str, correlation_id: str) -> None:
            body = {"correlationId": correlation_id, "amount": 19.90}
            try:
                async with session.post(f"{base}/payments", json=body) as answer:
                    if answer.status == 202:
                        found.accepted.add(correlation_id)
            except aiohttp.ClientError:
                # Its replica was killed: never answered 2xx, maybe accepted.
                found.unanswered.add(correlation_id)

        async def send() -> None:
            for index in indices:
                while pause.is_set():
                    await asyncio.sleep(0.01)
                correlation_id = str(uuid.uuid4())
                await asyncio.gather(*(post(base, correlation_id) for base in destinations(index)))
                await asyncio.sleep(0.02)

        async def configure(path: str, body: dict[str, Any]) -> None:
            url = f"{processors.default.url}/admin/configurations/{path}"
            async with session.put(url, json=body, headers=ADMIN):
                pass

        async def stir() -> None:
            for delay, failing in itertools.cycle(STAGES):
                if done.is_set():
                    break
                if not pause.is_set():
                    await configure("delay", {"delay": delay})
                    await configure("failure", {"failure": failing})
                await asyncio.sleep(STAGE_SECONDS)
            await configure("failure", {"failure": False})

        async def audit() -> None:
            while not done.is_set():
                for base in audited:
                    try:
                        lines = await audit_once(session, base, processors, start, lag)
                    except aiohttp.ClientError:
                        continue
                    found.differences.extend(f"{base} {line}" for line in lines)
                found.audits += 1
                await asyncio.sleep(audit_every)

        stirring = asyncio.create_task(stir())
        auditing = asyncio.create_task(audit())
        sending = [send() for _ in range(senders)]
        await asyncio.gather(*sending, *([meanwhile(pause)] if meanwhile else []))
        await asyncio.sleep(lag.total_seconds())
        done.set()
        await asyncio.gather(stirring, auditing)
    return found
