"""Replicas that share nothing but a MongoDB store: any number, on any hosts, each started
alone with the same command (README, "Several machines").

Every part lives in the store's database:
- confirmed payments and the purge marker (`ledger.py`): a summary is one aggregation there;
- claims (`claims.py`): a payment is charged once across replicas, with no affinity;
- leases (`lease.py`): who is alive, who polls the processors' health, each one's share of
  the processors' calls;
- takeover (`takeover.py`): a dead replica's payments are neither lost nor charged twice.

Purge (`{_id: "purge", atMs}`): every replica forgets, at its next renewal, the payments it
accepted up to that moment; a summary counts only payments accepted after it. The replica the
purge was asked of answers once every live replica has obeyed it (within a renewal, 0.5 s), so
that nothing accepted before a purge answered 200 is sent after it; else a 503.

Clocks: leases and the purge compare the replicas' wall clocks, so the hosts' clocks must agree
(NTP) to well within the lease's 3 s and the gap a client leaves after a purge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pymongo.errors import PyMongoError

from rinha.clock import now_ms
from rinha.cluster import Cluster, ClusterUnavailable, count_stored
from rinha.cluster.store.claims import Claims
from rinha.cluster.store.lease import REPLICA_PREFIX, Lease
from rinha.cluster.store.ledger import CLUSTER, MongoLedger
from rinha.cluster.store.takeover import Takeover
from rinha.config import SharedStore
from rinha.http import response
from rinha.journal import Journal, NoJournal, Recovered
from rinha.ledger import LedgerUnavailable, Summary
from rinha.payments import Payment
from rinha.processor_client import Outcome, ProcessorClient

if TYPE_CHECKING:
    from rinha.delivery import Dispatcher

log = logging.getLogger("rinha")

LEASE_LAPSED = response(503, b'{"error":"cannot keep the payment now, retry later"}')
STORE_UNAVAILABLE = response(503, b'{"error":"the ledger store did not answer; totals unknown"}')
PURGE_UNOBEYED = response(503, b'{"error":"a replica has not obeyed the purge yet; purge again"}')
SILENT_UNSETTLED = response(
    503, b'{"error":"a silent replica\'s payment cannot be looked up; totals unknown"}'
)
# A replica whose lease has gone unrenewed this long (it renews every 0.5 s) is silent: a
# summary looks its payments up on the processors.
SILENT_MS = 1000
# How long a purge waits for every live replica to obey it: two renewals.
PURGE_WAIT = 1.0

T = TypeVar("T")
Document = dict[str, Any]


class StoreCluster(Cluster):
    def __init__(
        self,
        topology: SharedStore,
        journal: Journal | NoJournal,
        clients: dict[str, ProcessorClient],
        health_interval: float,
    ) -> None:
        self._ledger = MongoLedger(topology.url)
        super().__init__(journal, self._ledger)
        self.name = REPLICA_PREFIX + uuid.uuid4().hex
        self._clients = clients
        self._health_interval = health_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()

    async def start(self, dispatcher: Dispatcher) -> Awaitable[Recovered]:
        """Take this run's lease and keep it alive while taking up what the journal's
        previous run left (through a slow store, that may take longer than a lease), then
        renew it from now on. Waits for the store, and takes the journal up before this
        replica answers: the previous run's claims are moved before this run claims anything."""
        self._dispatcher = dispatcher
        database = self._ledger.database
        self._claims = Claims(self._ledger, self.name, dispatcher)
        self._takeover = Takeover(
            self.name, self._claims.collection, database[CLUSTER], dispatcher, self.known_ids
        )
        self._lease = Lease(
            self.name,
            database[CLUSTER],
            dispatcher,
            self._takeover,
            self._clients,
            self._health_interval,
            self._purged_elsewhere,
            self._claims.hand_over,
        )
        dispatcher.allow(-math.inf, 0)  # nothing leaves before the first renewal
        recovered = await self.journal.recover()
        await self.record_confirmed(recovered)
        self.known_ids.update(recovered.known_ids)
        purged_at_ms = await _patiently("waiting for the store", self._join)
        kept_alive = asyncio.get_running_loop().create_task(self._lease.keep_alive())
        try:
            await self._take_up(dispatcher, recovered, purged_at_ms)
        finally:
            kept_alive.cancel()
        # Renewed once before the first POST: one is refused while the lease has lapsed.
        await _patiently("renewing the lease", self._lease.renew)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._claims.write_forever()),
            loop.create_task(self._lease.renew_forever()),
        ]
        taken_up: asyncio.Future[Recovered] = loop.create_future()
        taken_up.set_result(recovered)
        return taken_up

    async def _take_up(
        self, dispatcher: Dispatcher, recovered: Recovered, purged_at_ms: int
    ) -> None:
        """The payments still the previous run's own in the store, as the journal knows them;
        those it accepted and never claimed, to be claimed now; those only the store knows,
        looked up on both processors."""
        self._takeover.purged_at_ms = purged_at_ms
        known = {
            correlation_id: payment
            for correlation_id, payment in recovered.pending.items()
            if payment.accepted_ms > purged_at_ms
        }
        # A purge this journal has not seen forgot these ids: they may be accepted anew.
        self.forget_known(purged_at_ms)
        previous = recovered.last_incarnation
        if previous is None:
            unclaimed = list(known.values())
        else:
            unclaimed = await _patiently(
                "taking up the previous run's payments",
                lambda: self._takeover.take_over_previous(previous, known),
            )
        for payment in unclaimed:
            self._claims.claim(payment)
        dispatcher.restore(unclaimed)
        self.journal.incarnation(self.name)

    async def _join(self) -> int:
        await self._lease.join()
        return await self._ledger.purged_at_ms()

    def accept(self, payment: Payment) -> None:
        if self._loop.time() >= self._dispatcher.send_until:
            # The store is out of reach, or this replica stalled: others may be taking over
            # what it holds, and it exits once it finds its lease dead.
            raise ClusterUnavailable(LEASE_LAPSED, "this replica's lease has lapsed")
        # In the store's clock, as every purge's moment is: hosts' clocks may differ.
        payment.accepted_ms += self._lease.clock_offset_ms
        super().accept(payment)
        self._claims.claim(payment)

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        """The store's confirmed payments and owned claims, plus this replica's own payments
        whose claims are on their way.

        A replica whose lease has gone unrenewed for SILENT_MS is stalled, or dead and not
        taken over yet (a lease lasts 3 s, longer than an audit's 2 s lag): the processors
        may have stored its payments meanwhile. Each claim it owns, or that another took over
        from a dead one and is still looking up, counts as the processors have it, looked up
        on both, and not as the store may have it recorded by now: the two reads are not one
        moment."""
        try:
            purged_at_ms = await self._ledger.purged_at_ms()
            store_now = now_ms() + self._lease.clock_offset_ms
            silent = await self._lease.silent_since(store_now - SILENT_MS)
            unsettled = [doc async for doc in self._claims.unsettled(silent, purged_at_ms)]
            ids = [doc["_id"] for doc in unsettled]
            pending = await self._claims.pending(purged_at_ms)
            totals = await self._ledger.confirmed(from_ms, to_ms, purged_at_ms, excluded=ids)
        except (LedgerUnavailable, PyMongoError) as error:
            raise ClusterUnavailable(STORE_UNAVAILABLE, str(error)) from error
        totals["pending"] = pending
        if unsettled:
            await self._count_as_looked_up(totals, unsettled, from_ms, to_ms)
        return totals

    async def _count_as_looked_up(
        self, totals: Summary, claims: list[Document], from_ms: int | None, to_ms: int | None
    ) -> None:
        names = list(self._clients)
        found = await asyncio.gather(
            *(self._clients[name].lookup(doc["_id"]) for doc in claims for name in names)
        )
        for index, doc in enumerate(claims):
            for name, stored in zip(names, found[index * len(names) : (index + 1) * len(names)]):
                if isinstance(stored, Outcome):
                    raise ClusterUnavailable(SILENT_UNSETTLED, f"{doc['_id']} on {name}")
                if stored is None:
                    continue
                count_stored(totals, name, doc["cents"], stored, from_ms, to_ms)

    async def purge(self) -> None:
        """Every replica forgets what it accepted up to now: this one at once, the others at
        their next renewal, which this one waits for."""
        try:
            at_ms = await self._ledger.purge()
            self._forget(at_ms)
            obeyed = await self._lease.obeyed(at_ms, PURGE_WAIT)
        except (LedgerUnavailable, PyMongoError) as error:
            raise ClusterUnavailable(STORE_UNAVAILABLE, str(error)) from error
        if not obeyed:
            raise ClusterUnavailable(PURGE_UNOBEYED, "a live replica has not obeyed the purge")

    async def close(self) -> None:
        """Its lease stays: it expires, and whoever marks it dead finds what is left, if
        anything."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._ledger.close()

    async def _purged_elsewhere(self, at_ms: int) -> None:
        """A purge asked of another replica, seen at a renewal."""
        if at_ms > self._takeover.purged_at_ms:
            self._forget(at_ms)
            await self._claims.collection.delete_many(
                {"owner": self.name, "acceptedMs": {"$lte": at_ms}}
            )

    def _forget(self, up_to_ms: int) -> None:
        takeover = self._takeover
        takeover.purged_at_ms = max(takeover.purged_at_ms, up_to_ms)
        self._claims.forget(up_to_ms)
        self._dispatcher.purge(up_to_ms)
        self.forget_known(up_to_ms)
        try:
            self.journal.purged(up_to_ms)
        except OSError as error:
            # The store's purge moment sorts the journal out at the next start.
            log.warning("purge not journaled: %s", error)


async def _patiently(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt`'s result, once the store answers it: a replica cannot start without it."""
    while True:
        try:
            return await attempt()
        except PyMongoError as error:
            log.warning("%s: %s", what, error)
            await asyncio.sleep(1.0)
