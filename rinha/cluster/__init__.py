"""How replicas agree: one `Cluster` seam, two shapes behind it.

Whatever the shape, a cluster keeps five promises (README, "Running the stack"):
- one exact summary from any live replica, alone: every replica's confirmed payments in the
  window and every pending one, or `ClusterUnavailable`, never a wrong figure;
- one purge: asked of any replica, every replica forgets what it accepted up to then;
- one health poller: the processors allow one health call per 5 s for every caller together
  (SPEC.md §3), so exactly one replica polls and every replica applies its reports;
- a share of the processors' 800 calls for each replica;
- a dead replica's payments neither lost nor charged twice.

The two shapes:
- one host (`rinha.cluster.host`): each replica reads its peers' journals and reaches them on
  private control sockets; with no peer named, a lone replica;
- several machines (`rinha.cluster.store`): replicas share nothing but a MongoDB store, with
  claims, leases and a purge marker in it.

The POST path asks the cluster two things: whether an id was answered 202 already, and to
accept a payment (its journal line, and in the store shape its claim). Everything else the
cluster does in the background or when a summary or purge asks.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from rinha.config import OneHost, Topology
from rinha.journal import Journal, NoJournal, Recovered
from rinha.ledger import Ledger, Summary, Totals
from rinha.payments import Payment
from rinha.processor_client import HealthReport, ProcessorClient, StoredPayment

if TYPE_CHECKING:
    from rinha.delivery import Dispatcher

# Recorded in one go, a long journal's confirmed payments (90,000 in the contest's final) held
# the event loop for tens of milliseconds.
RECORDS_AT_ONCE = 1000


class ClusterUnavailable(Exception):
    """The cluster-wide answer is unknown now; `answer` is the whole 503 response to give."""

    def __init__(self, answer: bytes, reason: str) -> None:
        super().__init__(reason)
        self.answer = answer


class Cluster(abc.ABC):
    """This replica's part of the cluster. The journal and the ids answered 202 are the
    replica's own; each shape says how they meet the others'."""

    def __init__(self, journal: Journal | NoJournal, ledger: Ledger) -> None:
        self.journal = journal
        # Where the dispatcher records what a processor confirmed.
        self.ledger = ledger
        # Every correlationId this replica answered 202 for since the last purge, with when.
        self.known_ids: dict[str, int] = {}

    def knows(self, correlation_id: str) -> bool:
        """Answered 202 already: a replay is answered 202 again and charged nothing."""
        return correlation_id in self.known_ids

    def accept(self, payment: Payment) -> None:
        """Keep an accepted payment before its 202 leaves: OSError if its journal line could
        not be written, ClusterUnavailable if this replica cannot take payments now; either
        way nothing is kept."""
        self.journal.accepted(payment)
        self.known_ids[payment.correlation_id] = payment.accepted_ms

    def forget_known(self, up_to_ms: int) -> None:
        """A purge: the ids accepted up to `up_to_ms` may be accepted anew."""
        known = self.known_ids  # in place: the store's takeover holds it too
        for correlation_id in [i for i, at in known.items() if at <= up_to_ms]:
            del known[correlation_id]

    @abc.abstractmethod
    async def start(self, dispatcher: Dispatcher) -> Awaitable[Recovered]:
        """Join the others, before this replica answers. Returns the taking up of what the
        journal's earlier runs left: under way while this replica answers, or done already
        where the shape must have it first."""

    async def record_confirmed(self, recovered: Recovered) -> None:
        """The earlier runs' confirmed payments recorded again, RECORDS_AT_ONCE at a time,
        with the requests that arrived meanwhile answered between them."""
        for index, entry in enumerate(recovered.confirmed_entries, 1):
            self.ledger.record(
                entry.correlation_id,
                entry.processor,
                entry.requested_at_ms,
                entry.cents,
                entry.accepted_ms,
            )
            if index % RECORDS_AT_ONCE == 0:
                await asyncio.sleep(0)

    @abc.abstractmethod
    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        """The whole cluster's payments confirmed in the window, and `pending`; raises
        ClusterUnavailable."""

    @abc.abstractmethod
    async def purge(self) -> None:
        """Every replica forgets what it accepted up to now; raises ClusterUnavailable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the cluster; what this replica holds stays in its journal."""


def count_stored(
    totals: Summary,
    processor: str,
    cents: int,
    stored: StoredPayment,
    from_ms: int | None,
    to_ms: int | None,
) -> None:
    """A pending payment that a lookup found `processor` has stored (its replica silent):
    pending no more, and counted where the processor's requestedAt falls."""
    totals["pending"] = totals["pending"] - Totals(1, cents)
    at = stored.requested_at_ms
    if (from_ms is None or from_ms <= at) and (to_ms is None or at <= to_ms):
        totals[processor] = totals[processor] + Totals(1, stored.cents)


def open_cluster(
    topology: Topology,
    journal: Journal | NoJournal,
    clients: dict[str, ProcessorClient],
    health_interval: float,
) -> Cluster:
    """This replica's part of the cluster `topology` names."""
    if isinstance(topology, OneHost):
        from rinha.cluster.host import HostCluster

        return HostCluster(topology, journal, clients, health_interval)
    # Imported only with a store: a replica without one loads no pymongo.
    from rinha.cluster.store import StoreCluster

    return StoreCluster(topology, journal, clients, health_interval)


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
