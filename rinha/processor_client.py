"""The outbound side: one pooled aiohttp session per processor, answers mapped at one boundary.

Every attempt ends in exactly one `Outcome`. Only CONFIRMED and DUPLICATE prove the processor
stored the payment; REFUSED proves it did not, and says the processor is not taking payments
now (SPEC.md §3: a 500 stores nothing, a 429 comes from the limiter, a refused connection
never reached it); REJECTED proves it did not either, but says nothing of the processor: it
refused this one payment (another 4xx); UNKNOWN — a timeout, a reset, an answer we cannot
read — may have gone either way and must be settled on the same processor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import aiohttp
import orjson
from yarl import URL

from rinha.clock import parse_us

_JSON = {"Content-Type": "application/json"}


class Outcome(enum.Enum):
    CONFIRMED = "confirmed"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class StoredPayment:
    requested_at_ms: int
    cents: int


@dataclass(frozen=True, slots=True)
class HealthReport:
    failing: bool
    min_response_ms: int


_BY_STATUS = {
    200: Outcome.CONFIRMED,
    422: Outcome.DUPLICATE,
    429: Outcome.REFUSED,
    500: Outcome.REFUSED,  # the processor's "failing"
}


def _outcome_of(status: int) -> Outcome:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return Outcome.REJECTED
    return Outcome.UNKNOWN


class ProcessorClient:
    def __init__(self, name: str, base_url: str, *, timeout: float) -> None:
        self.name = name
        payments = base_url.rstrip("/") + "/payments"
        # Built once: a URL given as text is parsed again on every call.
        self._payments_url = URL(payments)
        self._health_url = URL(payments + "/service-health")
        self._lookup_base = payments + "/"
        # Every payment sent, fresh or re-sent, by how it ended; read by the metrics.
        self.attempts = dict.fromkeys(Outcome, 0)
        # Lean: one timeout for the session, no cookie jar, no decompression, no headers
        # beyond the ones the processors read; every call then skips that work. No connection
        # limit: the dispatcher bounds the payments on a processor, and a health call must
        # not queue behind them.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=_JSON,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def send(self, body: bytes) -> Outcome:
        try:
            async with self._session.post(self._payments_url, data=body) as answer:
                await answer.read()
                outcome = _outcome_of(answer.status)
        except aiohttp.ClientConnectorError:
            outcome = Outcome.REFUSED
        except (TimeoutError, aiohttp.ClientError):
            outcome = Outcome.UNKNOWN
        self.attempts[outcome] += 1
        return outcome

    async def lookup(self, correlation_id: str) -> StoredPayment | None | Outcome:
        """The stored payment, None when the processor has none, UNKNOWN when it cannot say."""
        try:
            async with self._session.get(self._lookup_base + correlation_id) as answer:
                body = await answer.read()
                if answer.status == 404:
                    return None
                if answer.status != 200:
                    return Outcome.UNKNOWN
                stored = orjson.loads(body)
                return StoredPayment(
                    parse_us(stored["requestedAt"]) // 1000, round(stored["amount"] * 100)
                )
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            return Outcome.UNKNOWN

    async def health(self) -> HealthReport | None:
        """The health endpoint's answer, or None when rate limited or unreachable."""
        try:
            async with self._session.get(self._health_url) as answer:
                body = await answer.read()
                if answer.status != 200:
                    return None
                report = orjson.loads(body)
                return HealthReport(bool(report["failing"]), int(report["minResponseTime"]))
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            return None

    async def close(self) -> None:
        await self._session.close()
