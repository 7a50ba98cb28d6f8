"""Leases: who is alive, who polls the processors' health, and each one's share of the calls.

`cluster` holds one lease per run of a replica, `{_id: "replica:<run>", expiresMs}`, renewed
every RENEW_INTERVAL for LEASE_MS ahead. At each renewal a replica reads every document there:
- the live leases divide the processors' 800 calls (PROCESSOR_SLOTS) among them;
- a lease that expired marks a dead replica, taken over (rinha/cluster/store/takeover.py);
- `{_id: "poller", holder, expiresMs}` is a lease of its own: the live replica that holds it
  polls the processors' health and stores each report (`{_id: "health"}`), which every replica
  applies at its next renewal;
- `{_id: "purge", atMs}` (rinha/cluster/store/ledger.py): a purge newer than the last one seen
  here makes this replica forget what it accepted up to then, and say so in its lease
  (`obeyedMs`): the replica the purge was asked of answers once every live one has.

A replica whose lease lapses (the store out of reach) starts no attempt until it is renewed,
and one that finds its lease marked dead exits: others own its payments now.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from rinha.clock import now_ms
from rinha.cluster import poll_health
from rinha.cluster.store.ledger import PURGE_ID
from rinha.cluster.store.takeover import NEVER_PURGED, Takeover
from rinha.processor_client import HealthReport, ProcessorClient

if TYPE_CHECKING:
    from rinha.delivery import Dispatcher

log = logging.getLogger("rinha")

RENEW_INTERVAL = 0.5
LEASE_MS = 3000
# The processors take 800 calls at once in all; a few stay free for lookups and health calls.
PROCESSOR_SLOTS = 780
# How long one renewal may spend moving dead replicas' claims.
TAKEOVER_SECONDS = 1.0
POLLER_ID = "poller"
HEALTH_ID = "health"
REPLICA_PREFIX = "replica:"
# The exit status of a replica that found its lease taken over.
TAKEN_OVER = 3
# How often a purge reads whether every live replica has obeyed it.
OBEYED_POLL = 0.05

Document = dict[str, Any]
# The store's clock, in epoch milliseconds, inside an update pipeline.
STORE_NOW = {"$toLong": "$$NOW"}
RENEWED = [{"$set": {"expiresMs": {"$add": [STORE_NOW, LEASE_MS]}}}]


class Lease:
    def __init__(
        self,
        name: str,
        leases: AsyncCollection[Document],
        dispatcher: Dispatcher,
        takeover: Takeover,
        clients: dict[str, ProcessorClient],
        health_interval: float,
        purged: Callable[[int], Awaitable[None]],
        taken_over: Callable[[], Awaitable[None]],
    ) -> None:
        self._name = name
        self._leases = leases
        self._dispatcher = dispatcher
        self._takeover = takeover
        self._clients = clients
        self._health_interval = health_interval
        self._purged = purged  # told the moment of a purge newer than the last one seen
        self._taken_over = taken_over  # awaited before this process exits, taken over
        self._loop = asyncio.get_running_loop()
        self._poller: asyncio.Task[None] | None = None
        self._health_at_ms = 0
        self._obeyed_ms = NEVER_PURGED  # the last purge this lease says was obeyed
        self._back_at = float("-inf")  # when its lease was renewed after it had lapsed
        # The store's clock less this host's, as of the last renewal (within half its round
        # trip).
        self.clock_offset_ms = 0

    async def join(self) -> None:
        """Take this run's lease and make sure the poller's exists."""
        await self._leases.update_one({"_id": self._name}, RENEWED, upsert=True)
        await self._leases.update_one(
            {"_id": POLLER_ID}, {"$setOnInsert": {"expiresMs": 0}}, upsert=True
        )

    async def silent_since(self, renewed_before_ms: int) -> list[str]:
        """The other replicas whose leases were last renewed before `renewed_before_ms`
        (the store's clock)."""
        query = {**self._others(), "expiresMs": {"$lt": renewed_before_ms + LEASE_MS}}
        return [doc["_id"] async for doc in self._leases.find(query, {"_id": 1})]

    async def obeyed(self, at_ms: int, within: float) -> bool:
        """Whether every other live replica says, within `within` seconds, that it obeyed
        the purge of `at_ms`: until it renews, a replica still sends what it accepted before.
        One whose lease has expired sends nothing."""
        deadline = self._loop.time() + within
        while True:
            query = {
                **self._others(),
                "dead": {"$ne": True},
                "expiresMs": {"$gte": now_ms() + self.clock_offset_ms},
            }
            leases = self._leases.find(query, {"obeyedMs": 1})
            if all([doc.get("obeyedMs", NEVER_PURGED) >= at_ms async for doc in leases]):
                return True
            if self._loop.time() >= deadline:
                return False
            await asyncio.sleep(OBEYED_POLL)

    def _others(self) -> Document:
        """The other replicas' leases."""
        return {"_id": {"$regex": f"^{REPLICA_PREFIX}", "$ne": self._name}}

    async def renew_forever(self) -> None:
        try:
            while True:
                try:
                    await self.renew()
                except Exception:
                    log.exception("lease not renewed")
                    self._hold_poller(False)  # another replica may hold it by now
                    self._takeover.moved_untaken = True  # a takeover may have stopped half way
                await asyncio.sleep(RENEW_INTERVAL)
        finally:
            self._hold_poller(False)

    async def keep_alive(self) -> None:
        """Only extend the lease, every RENEW_INTERVAL, forever: while the replica takes up
        its previous run, which through a slow store may take longer than a lease, and
        before it may act on anything a renewal reads."""
        while True:
            try:
                await self._extend()
            except PyMongoError as error:
                log.warning("lease not extended: %s", error)
            await asyncio.sleep(RENEW_INTERVAL)

    async def _extend(self) -> Document:
        """This run's lease, extended; a lease found dead makes the process exit, after
        handing over what only it knows."""
        renewed = await self._leases.find_one_and_update(
            {"_id": self._name, "dead": {"$ne": True}},
            RENEWED,
            return_document=ReturnDocument.AFTER,
        )
        if renewed is None:
            log.critical("this replica's lease was taken over: its payments are another's now")
            await self._taken_over()
            os._exit(TAKEN_OVER)
        return renewed

    async def renew(self) -> None:
        """Renew once; raises PyMongoError when the store does not answer."""
        started = self._loop.time()
        sent_ms = now_ms()
        renewed = await self._extend()
        # Back after its own lease lapsed: the others may be coming back too, so it waits
        # one lease before it takes any of them over.
        if started >= self._dispatcher.send_until:
            self._back_at = started
        # The store's clock: every lease is set and compared in it, so that a host whose clock
        # is off marks no live replica dead, and its acceptances are stamped in it too.
        at_ms = renewed["expiresMs"] - LEASE_MS
        self.clock_offset_ms = at_ms - (sent_ms + now_ms()) // 2
        holder = await self._leases.update_one(
            {"_id": POLLER_ID, "$or": [{"holder": self._name}, {"expiresMs": {"$lt": at_ms}}]},
            {"$set": {"holder": self._name, "expiresMs": at_ms + LEASE_MS}},
        )
        self._hold_poller(bool(holder.matched_count))
        docs = {doc["_id"]: doc async for doc in self._leases.find({})}
        purge = docs.get(PURGE_ID)
        if purge is not None and purge["atMs"] > self._obeyed_ms:
            await self._purged(purge["atMs"])
            await self._leases.update_one(
                {"_id": self._name}, {"$set": {"obeyedMs": purge["atMs"]}}
            )
            self._obeyed_ms = purge["atMs"]
        health = docs.get(HEALTH_ID)
        if health is not None and health["atMs"] > self._health_at_ms:
            self._health_at_ms = health["atMs"]
            for name, (failing, min_response_ms) in health["reports"].items():
                self._dispatcher.apply_health(name, HealthReport(failing, min_response_ms))
        leases = [doc for key, doc in docs.items() if key.startswith(REPLICA_PREFIX)]
        live = [doc for doc in leases if not doc.get("dead") and doc["expiresMs"] >= at_ms]
        self._dispatcher.allow(started + LEASE_MS / 1000, PROCESSOR_SLOTS // max(len(live), 1))
        if self._takeover.moved_untaken:
            await self._takeover.take_up_moved()
        if started - self._back_at < LEASE_MS / 1000:
            return
        # Takeovers stop in time for the next renewal: this replica's own lease comes first.
        deadline = started + TAKEOVER_SECONDS
        for lease in leases:
            if lease["_id"] != self._name and (lease.get("dead") or lease["expiresMs"] < at_ms):
                await self._takeover.take_over(lease, at_ms, deadline)

    def _hold_poller(self, holds: bool) -> None:
        if holds and self._poller is None:
            log.info("this replica polls the processors' health")
            self._poller = self._loop.create_task(
                poll_health(self._clients, self._health_interval, self._publish)
            )
        elif not holds and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def _publish(self, reports: dict[str, HealthReport]) -> None:
        at_ms = now_ms() + self.clock_offset_ms
        for name, report in reports.items():
            self._dispatcher.apply_health(name, report)
        self._health_at_ms = at_ms
        stored = {
            name: [report.failing, report.min_response_ms] for name, report in reports.items()
        }
        try:
            await self._leases.update_one(
                {"_id": HEALTH_ID}, {"$set": {"atMs": at_ms, "reports": stored}}, upsert=True
            )
        except PyMongoError as error:
            log.warning("health report not stored: %s", error)
