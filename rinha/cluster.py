"""Replicas behind one load balancer: one audit wherever a request lands, one health decider.

Each replica keeps its own ledger and answers for it on a private control socket (outside the
three public routes). A public summary is the replica's own totals plus every peer's, asked
concurrently over those sockets; if a peer cannot answer, the summary is an error, never a
wrong figure. A purge reaches every replica the same way.

The health endpoint allows one call per 5 s per processor for all callers together
(SPEC.md §3), so exactly one replica polls it and pushes each report to its peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import orjson

from rinha.ledger import Summary, Totals
from rinha.processor_client import HealthReport, ProcessorClient

# Control-socket routes. Bodies carry integers only: counts and cents.
SUMMARY_PATH = "/control/summary"
PURGE_PATH = "/control/purge"
HEALTH_PATH = "/control/health"


class PeerUnavailable(Exception):
    """A peer replica did not answer; totals across the cluster cannot be known now."""


def encode_totals(summary: Summary) -> bytes:
    return orjson.dumps({name: [t.count, t.cents] for name, t in summary.items()})


def decode_totals(body: bytes) -> Summary:
    return {name: Totals(count, cents) for name, (count, cents) in orjson.loads(body).items()}


def encode_health(reports: dict[str, HealthReport]) -> bytes:
    return orjson.dumps({name: [r.failing, r.min_response_ms] for name, r in reports.items()})


def decode_health(body: bytes) -> dict[str, HealthReport]:
    return {name: HealthReport(bool(f), int(ms)) for name, (f, ms) in orjson.loads(body).items()}


class Peers:
    """The other replicas, each reached over its control unix socket."""

    def __init__(self, sockets: Sequence[str], timeout: float = 2.0) -> None:
        self._sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=timeout),
            )
            for path in sockets
        ]

    async def _each(self, method: str, path: str, data: bytes | None = None) -> list[bytes]:
        async def one(session: aiohttp.ClientSession) -> bytes:
            async with session.request(method, "http://peer" + path, data=data) as answer:
                body = await answer.read()
                if answer.status != 200:
                    raise PeerUnavailable(f"peer answered {answer.status} to {path}")
                return body

        try:
            return await asyncio.gather(*(one(session) for session in self._sessions))
        except (TimeoutError, aiohttp.ClientError) as error:
            raise PeerUnavailable(str(error) or type(error).__name__) from error

    async def totals(self, query: bytes) -> list[Summary]:
        path = SUMMARY_PATH + ("?" + query.decode("latin-1") if query else "")
        return [decode_totals(body) for body in await self._each("GET", path)]

    async def purge(self) -> None:
        await self._each("POST", PURGE_PATH)

    async def push_health(self, reports: dict[str, HealthReport]) -> None:
        await self._each("PUT", HEALTH_PATH, encode_health(reports))

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()


async def poll_health(
    clients: dict[str, ProcessorClient],
    interval: float,
    publish: Callable[[dict[str, HealthReport]], Awaitable[None]],
) -> None:
    """Ask each processor for its health once per `interval`, forever, and publish the answers."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        answers = await asyncio.gather(*(client.health() for client in clients.values()))
        reports = {name: r for name, r in zip(clients, answers) if r is not None}
        if reports:
            await publish(reports)
        next_at = max(next_at + interval, loop.time())
        await asyncio.sleep(next_at - loop.time())
