"""Replicas behind one load balancer: one audit wherever a request lands, one health decider.

Every replica's journal says what it confirmed and what it holds pending, line by line before
acting on it (rinha/journal.py). A public summary is the replica's own totals plus what each
peer's journal says, read at that moment: answered by any live replica alone, and exact while a
peer is dead or restarting, with one bound: what a killed replica had sent and not yet heard
back about may be stored by the processor meanwhile, and is counted once the replica, started
again, settles it (about a second under `python -m rinha up`; an audit window ends 1.5–2 s
before now). If a peer's journal cannot be read, the summary is an error, never a wrong
figure. (Replicas with the ledger in MongoDB share the store instead: rinha/store.py.)

A purge reaches every replica on its private control socket (outside the three public
routes). A replica that is down (its journal's lock is free) gets the purge in its journal,
which it obeys when it starts again; only a replica that is running and does not answer makes
the purge fail (503), and a retry purges everything again.

The health endpoint allows one call per 5 s per processor for all callers together
(SPEC.md §3), so exactly one replica polls it and pushes each report to its peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import aiohttp
import orjson

from rinha.journal import JournalInUse, PeerJournal, purge_unowned
from rinha.ledger import Summary, Totals
from rinha.processor_client import HealthReport, ProcessorClient

# Control-socket routes.
PURGE_PATH = "/control/purge"
HEALTH_PATH = "/control/health"
# A replica reads its peers' journals this often between summaries. Read only when a summary
# asked (the test audits every 10 s, through each replica in turn), a journal had gained some
# 30 s of lines: late in the final scenario 100-200 ms of CPU at once, which the contest's CPU
# caps throttle the replica for while its POSTs wait. Read every second, the same lines cost
# the same CPU in pieces too small to matter.
FOLLOW_INTERVAL = 1.0


class PeerUnavailable(Exception):
    """A peer replica could not be reached or read; the cluster-wide answer is unknown now."""


def encode_health(reports: dict[str, HealthReport]) -> bytes:
    return orjson.dumps({name: [r.failing, r.min_response_ms] for name, r in reports.items()})


def decode_health(body: bytes) -> dict[str, HealthReport]:
    return {name: HealthReport(bool(f), int(ms)) for name, (f, ms) in orjson.loads(body).items()}


async def _on_every_peer(calls: Iterable[Awaitable[None]]) -> None:
    """Every call runs to its end, so one peer's failure leaves none half done; the first
    failure is raised after."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class Peer:
    """Another replica: its control socket and its journal."""

    def __init__(self, control: str, journal: str, timeout: float) -> None:
        self.journal = PeerJournal(journal)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=control),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def call(self, method: str, path: str, data: bytes | None = None) -> None:
        try:
            async with self._session.request(method, "http://peer" + path, data=data) as answer:
                await answer.read()
                if answer.status != 200:
                    raise PeerUnavailable(f"peer answered {answer.status} to {path}")
        except (TimeoutError, aiohttp.ClientError) as error:
            raise PeerUnavailable(str(error) or type(error).__name__) from error

    async def read_journal(self) -> None:
        """Take in whatever the peer's journal gained since the last read."""
        journal = self.journal
        try:
            journal.open_current()
            while journal.read_chunk():
                await asyncio.sleep(0)  # the POSTs that arrived meanwhile go first
        except OSError as error:
            raise PeerUnavailable(f"{journal.path}: {error}") from error

    async def purge(self) -> None:
        try:
            await self.call("POST", PURGE_PATH)
        except PeerUnavailable:
            try:
                purge_unowned(self.journal.path)
            except JournalInUse:
                raise PeerUnavailable(f"{self.journal.path}: running, not answering") from None
            except OSError as error:
                raise PeerUnavailable(str(error)) from error

    async def close(self) -> None:
        self.journal.close()
        await self._session.close()


class Peers:
    """The other replicas of this host's cluster."""

    def __init__(self, peers: Sequence[tuple[str, str]], *, timeout: float = 2.0) -> None:
        self._peers = [Peer(control, journal, timeout) for control, journal in peers]

    async def totals(self, from_ms: int | None, to_ms: int | None) -> Summary:
        """What every peer's journal says it confirmed in the window and holds pending."""
        totals: Summary = {}
        for peer in self._peers:
            await peer.read_journal()
            for name, part in peer.journal.totals(from_ms, to_ms).items():
                totals[name] = totals.get(name, Totals()) + part
        return totals

    async def follow(self) -> None:
        """Read every peer's journal up to its end once per FOLLOW_INTERVAL, forever, so that a
        summary only reads what was written since."""
        while True:
            for peer in self._peers:
                try:
                    await peer.read_journal()
                except PeerUnavailable:
                    pass  # a summary meanwhile answers 503 and says why
            await asyncio.sleep(FOLLOW_INTERVAL)

    async def purge(self) -> None:
        await _on_every_peer(peer.purge() for peer in self._peers)

    async def push_health(self, reports: dict[str, HealthReport]) -> None:
        body = encode_health(reports)
        await _on_every_peer(peer.call("PUT", HEALTH_PATH, body) for peer in self._peers)

    async def close(self) -> None:
        for peer in self._peers:
            await peer.close()


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
