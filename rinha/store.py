"""Replicas that share nothing but the store: with the ledger in MongoDB, any number of replicas
on any hosts, each started alone, no peer named (README, "Several machines").

Every part lives in the ledger's database, beside the confirmed payments (rinha/ledger/mongodb.py):

- **Claims** (`claims`, one document per correlationId: `owner`, `cents`, `acceptedMs`). A
  replica answers 202 after its journal line, as always, and its claims are inserted off the
  POST path, every 20 ms, in one `insert_many(ordered=False)`. A payment is sent only after its
  claim is stored; when another replica's claim on the same id is there first, this replica
  drops its copy. A confirmation clears the claim's owner, so the owned claims are exactly the
  pending payments.
- **Leases** (`cluster`, `{_id: "replica:<run>", expiresMs}`). Each run of a replica has a
  name of its own and renews its lease every 0.5 s for 3 s ahead. The live leases divide the
  processors' 800 calls at once; a lease that expired marks a dead replica, whose claims a
  live one takes over: it moves them to itself one by one (`find_one_and_update` on `owner`,
  so each claim moves once, marked `takenFrom`), then looks each payment up on both
  processors, because the dead replica may have sent it to either, until `--settle-after` has
  passed, longer than any of its attempts can take; found, it is recorded as found, else
  routed afresh. A replica whose lease lapses (the store out of reach) starts no attempt until
  it is renewed, and one that finds its lease taken over exits: others own its payments now.
- **The health poller** (`{_id: "poller", holder, expiresMs}`): the live replica that holds
  this lease polls the processors' health and stores each report (`{_id: "health"}`); every
  replica applies a new report at its next renewal, within 0.5 s.
- **Purge** (`{_id: "purge", atMs}`, rinha/ledger/mongodb.py): every replica forgets, at its
  next renewal, the payments it accepted up to that moment.

A replica restarted on the same journal takes over its previous run at once: what the journal
says of each payment (sent where, with which requestedAt) still holds, so only payments the
journal does not know are looked up on both processors.

Clocks: leases and the purge compare the replicas' wall clocks, so the hosts' clocks must agree
(NTP) to well within the lease's 3 s and the gap a client leaves after a purge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo.errors import BulkWriteError, PyMongoError

from rinha.clock import now_ms
from rinha.cluster import poll_health
from rinha.dispatcher import Dispatcher
from rinha.journal import Journal, NoJournal, Recovered
from rinha.ledger import LedgerUnavailable, Summary, Totals
from rinha.ledger.mongodb import CLAIMS, CLUSTER, DUPLICATE_KEY, PURGE_ID, MongoLedger
from rinha.payments import Payment
from rinha.processor_client import HealthReport, ProcessorClient

log = logging.getLogger("rinha")

CLAIM_INTERVAL = 0.02
CLAIM_BATCH = 1000
RENEW_INTERVAL = 0.5
LEASE_MS = 3000
# The processors take 800 calls at once in all; a few stay free for lookups and health calls.
PROCESSOR_SLOTS = 780
# How long one renewal may spend moving dead replicas' claims.
TAKEOVER_SECONDS = 1.0
# Before the first purge.
NEVER_PURGED = -1
# A dead lease that owns nothing is deleted this long after it expired.
FORGET_DEAD_AFTER_MS = 60_000
POLLER_ID = "poller"
HEALTH_ID = "health"
REPLICA_PREFIX = "replica:"
# The exit status of a replica that found its lease taken over.
TAKEN_OVER = 3

Document = dict[str, Any]
T = TypeVar("T")


class Store:
    def __init__(
        self,
        ledger: MongoLedger,
        dispatcher: Dispatcher,
        clients: dict[str, ProcessorClient],
        journal: Journal | NoJournal,
        accepted: set[str],
        health_interval: float,
    ) -> None:
        self._ledger = ledger
        self._claims = ledger.database[CLAIMS]
        self._cluster = ledger.database[CLUSTER]
        self._dispatcher = dispatcher
        self._clients = clients
        self._journal = journal
        self._accepted = accepted
        self._health_interval = health_interval
        self.name = REPLICA_PREFIX + uuid.uuid4().hex
        self._loop = asyncio.get_running_loop()
        self._unclaimed: list[Payment] = []
        self._claiming: list[Payment] = []  # the batch being written
        self._has_unclaimed = asyncio.Event()
        self._purged_at_ms = NEVER_PURGED
        self._health_at_ms = 0
        self._poller: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._back_at = -math.inf  # when its lease was renewed after it had lapsed
        # Ids of the claims this run moved to itself from dead runs and took up; claims moved
        # and not taken up (a reply lost, no room) are found again by `_take_up_moved`.
        self._taken: set[str] = set()
        self._moved_untaken = False

    async def start(self, recovered: Recovered) -> None:
        """Take this run's lease, then take up what the journal's previous run left: the
        payments still its own in the store, as the journal knows them; those it accepted and
        never claimed, to be claimed now; those only the store knows, looked up on both
        processors. Waits for the store."""
        self._dispatcher.allow(-math.inf, 0)  # nothing leaves before the first renewal
        purged_at_ms = self._purged_at_ms = await _patiently("waiting for the store", self._join)
        known = {
            correlation_id: payment
            for correlation_id, payment in recovered.pending.items()
            if payment.accepted_ms > purged_at_ms
        }
        # A purge this journal has not seen forgot these ids: they may be accepted anew.
        self._accepted.difference_update(
            [p.correlation_id for p in recovered.pending.values() if p.accepted_ms <= purged_at_ms]
            + [
                c.correlation_id
                for c in recovered.confirmed_entries
                if c.accepted_ms <= purged_at_ms
            ]
        )
        previous = recovered.last_incarnation
        if previous is None:
            unclaimed = list(known.values())
        else:
            unclaimed = await _patiently(
                "taking up the previous run's payments",
                lambda: self._take_over_previous(previous, known),
            )
        for payment in unclaimed:
            self.claim(payment)
        self._dispatcher.restore(unclaimed)
        self._journal.incarnation(self.name)
        self._tasks = [
            self._loop.create_task(self._claim_forever()),
            self._loop.create_task(self._renew_forever()),
        ]

    async def _join(self) -> int:
        """Take this run's lease and make sure the poller's exists; the last purge's moment."""
        await self._cluster.update_one(
            {"_id": self.name}, {"$set": self._lease(now_ms())}, upsert=True
        )
        await self._cluster.update_one(
            {"_id": POLLER_ID}, {"$setOnInsert": {"expiresMs": 0}}, upsert=True
        )
        return await self._ledger.purged_at_ms()

    async def close(self) -> None:
        """Its lease stays: it expires, and whoever marks it dead finds what is left, if
        anything."""
        for task in [*self._tasks, *([self._poller] if self._poller else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def claim(self, payment: Payment) -> None:
        """Claim an accepted payment in the store; it waits in the dispatcher meanwhile."""
        payment.owned = None
        self._unclaimed.append(payment)
        self._has_unclaimed.set()

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        """The store's confirmed payments, and its owned claims as the pending ones, plus
        this replica's own payments whose claims are not stored yet (another replica's are
        missing for those few milliseconds)."""
        claiming = [p for p in self._unclaimed + self._claiming if p.owned is None]
        pending = Totals(len(claiming), sum(payment.cents for payment in claiming))
        try:
            purged_at_ms = await self._ledger.purged_at_ms()
            cursor = await self._claims.aggregate(
                [
                    {"$match": self._owned_since(purged_at_ms)},
                    {"$group": {"_id": None, "count": {"$sum": 1}, "cents": {"$sum": "$cents"}}},
                ]
            )
            for row in await cursor.to_list():
                pending = pending + Totals(row["count"], row["cents"])
        except PyMongoError as error:
            raise LedgerUnavailable(f"summary failed: {error}") from error
        totals = await self._ledger.confirmed(from_ms, to_ms, purged_at_ms)
        totals["pending"] = pending
        return totals

    async def purge(self) -> None:
        """Every replica forgets what it accepted up to now: this one at once, the others at
        their next renewal."""
        await self._ledger.purge()
        self._forget(await self._ledger.purged_at_ms())

    @staticmethod
    def _owned_since(purged_at_ms: int, owner: str | None = None) -> Document:
        """Claims of pending payments accepted after the last purge (of `owner`'s, if given)."""
        owned: Any = {"$exists": True} if owner is None else owner
        return {"owner": owned, "acceptedMs": {"$gt": purged_at_ms}}

    # claims

    async def _claim_forever(self) -> None:
        while True:
            await self._has_unclaimed.wait()
            await asyncio.sleep(CLAIM_INTERVAL)
            try:
                await self._claim_once()
            except Exception:
                log.exception("claims not stored yet")
                await asyncio.sleep(RENEW_INTERVAL)

    async def _claim_once(self) -> None:
        batch = self._claiming = self._unclaimed[:CLAIM_BATCH]
        del self._unclaimed[:CLAIM_BATCH]
        if not self._unclaimed:
            self._has_unclaimed.clear()
        if not batch:
            return  # a purge forgot them
        try:
            await self._claim_batch(batch)
        except BaseException:
            self._unclaimed[:0] = [p for p in batch if p.owned is None]
            self._has_unclaimed.set()
            raise
        finally:
            self._claiming = []

    async def _claim_batch(self, batch: list[Payment]) -> None:
        docs = [
            {
                "_id": payment.correlation_id,
                "owner": self.name,
                "cents": payment.cents,
                "acceptedMs": payment.accepted_ms,
            }
            for payment in batch
        ]
        taken: set[int] = set()
        try:
            await self._claims.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", ())
            if error.details.get("writeConcernErrors") or any(
                e.get("code") != DUPLICATE_KEY for e in errors
            ):
                raise
            taken = {e["index"] for e in errors}
        for index, payment in enumerate(batch):
            if index not in taken:
                payment.owned = True
        if taken:
            await self._settle_duplicates([batch[index] for index in taken])
            again = [batch[index] for index in taken if batch[index].owned is None]
            if again:
                self._unclaimed[:0] = again
                self._has_unclaimed.set()
        self._dispatcher.wake()

    async def _settle_duplicates(self, payments: list[Payment]) -> None:
        """Claims refused because the id is claimed already: whose is it?"""
        ids = [payment.correlation_id for payment in payments]
        claims = {doc["_id"]: doc async for doc in self._claims.find({"_id": {"$in": ids}})}
        purged_at_ms = await self._ledger.purged_at_ms()
        for payment in payments:
            claim = claims.get(payment.correlation_id)
            if claim is None:
                continue  # purged since: claimed again with the next batch
            if claim["acceptedMs"] <= purged_at_ms:
                # Claimed before a purge by a replica that had not seen it yet: the id is free.
                forgotten = {"$lte": purged_at_ms}
                await self._claims.delete_one(
                    {"_id": payment.correlation_id, "acceptedMs": forgotten}
                )
                continue  # claimed again with the next batch
            # This run's own claim, stored by a write whose answer was lost; or another
            # replica's (owned by it, confirmed, or taken over here from a dead one, which
            # the copy taken over delivers): this copy is dropped.
            payment.owned = claim.get("owner") == self.name and "takenFrom" not in claim

    # leases

    def _lease(self, at_ms: int) -> Document:
        return {"_id": self.name, "expiresMs": at_ms + LEASE_MS}

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self._renew()
            except Exception:
                log.exception("lease not renewed")
                self._hold_poller(False)  # another replica may hold it by now
                self._moved_untaken = True  # a takeover may have stopped half way
            await asyncio.sleep(RENEW_INTERVAL)

    async def _renew(self) -> None:
        started = self._loop.time()
        at_ms = now_ms()
        renewed = await self._cluster.update_one(
            {"_id": self.name, "dead": {"$ne": True}}, {"$set": self._lease(at_ms)}
        )
        if not renewed.matched_count:
            log.critical("this replica's lease was taken over: its payments are another's now")
            os._exit(TAKEN_OVER)
        # Back after its own lease lapsed: the others may be coming back too, so it waits
        # one lease before it takes any of them over.
        if started >= self._dispatcher.send_until:
            self._back_at = started
        holder = await self._cluster.update_one(
            {"_id": POLLER_ID, "$or": [{"holder": self.name}, {"expiresMs": {"$lt": at_ms}}]},
            {"$set": {"holder": self.name, "expiresMs": at_ms + LEASE_MS}},
        )
        self._hold_poller(bool(holder.matched_count))
        docs = {doc["_id"]: doc async for doc in self._cluster.find({})}
        purge = docs.get(PURGE_ID)
        if purge is not None and purge["atMs"] > self._purged_at_ms:
            self._forget(purge["atMs"])
            await self._claims.delete_many(
                {"owner": self.name, "acceptedMs": {"$lte": purge["atMs"]}}
            )
        health = docs.get(HEALTH_ID)
        if health is not None and health["atMs"] > self._health_at_ms:
            self._health_at_ms = health["atMs"]
            for name, (failing, min_response_ms) in health["reports"].items():
                self._dispatcher.apply_health(name, HealthReport(failing, min_response_ms))
        leases = [doc for key, doc in docs.items() if key.startswith(REPLICA_PREFIX)]
        live = [doc for doc in leases if not doc.get("dead") and doc["expiresMs"] >= at_ms]
        self._dispatcher.allow(started + LEASE_MS / 1000, PROCESSOR_SLOTS // max(len(live), 1))
        if self._moved_untaken:
            await self._take_up_moved()
        if started - self._back_at < LEASE_MS / 1000:
            return
        # Takeovers stop in time for the next renewal: this replica's own lease comes first.
        deadline = started + TAKEOVER_SECONDS
        for lease in leases:
            if lease["_id"] != self.name and (lease.get("dead") or lease["expiresMs"] < at_ms):
                await self._take_over(lease, at_ms, deadline)

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
        at_ms = now_ms()
        for name, report in reports.items():
            self._dispatcher.apply_health(name, report)
        self._health_at_ms = at_ms
        stored = {
            name: [report.failing, report.min_response_ms] for name, report in reports.items()
        }
        try:
            await self._cluster.update_one(
                {"_id": HEALTH_ID}, {"$set": {"atMs": at_ms, "reports": stored}}, upsert=True
            )
        except PyMongoError as error:
            log.warning("health report not stored: %s", error)

    # purge and takeover

    def _forget(self, up_to_ms: int) -> None:
        self._purged_at_ms = max(self._purged_at_ms, up_to_ms)
        self._unclaimed = [p for p in self._unclaimed if p.accepted_ms > up_to_ms]
        kept = self._dispatcher.purge(up_to_ms)
        self._accepted.clear()
        self._accepted.update(payment.correlation_id for payment in kept)
        if not kept:
            # Everything in the journal is forgotten: its next start needs none of it. (With
            # payments kept, the store's purge moment sorts the journal out at that start.)
            try:
                self._journal.purged()
            except OSError as error:
                log.warning("purge not journaled: %s", error)

    async def _take_over(self, lease: Document, at_ms: int, deadline: float) -> None:
        """Mark a lease that expired dead (unless it was renewed meanwhile), then move a
        share of its claims here one by one, each looked up on both processors. A dead lease
        stays, so that a claim its replica stored late is found too, until it owns nothing
        and has been dead a while."""
        dead = lease["_id"]
        if not lease.get("dead"):
            marked = await self._cluster.update_one(
                {"_id": dead, "expiresMs": {"$lt": at_ms}}, {"$set": {"dead": True}}
            )
            if not marked.matched_count:
                return  # renewed after all
        while self._loop.time() < deadline and not self._dispatcher.full:
            doc = await self._move_claim(dead)
            if doc is None:
                if lease["expiresMs"] < at_ms - FORGET_DEAD_AFTER_MS:
                    await self._cluster.delete_one({"_id": dead, "dead": True})
                return
            self._take_up(doc)

    async def _move_claim(self, dead: str) -> Document | None:
        """One of a dead run's claims, made this run's; marked as moved, so that it is taken
        up even if the answer to this call is lost."""
        untaken, self._moved_untaken = self._moved_untaken, True
        doc: Document | None = await self._claims.find_one_and_update(
            self._owned_since(self._purged_at_ms, dead),
            {"$set": {"owner": self.name, "takenFrom": dead}},
        )
        self._moved_untaken = untaken
        return doc

    def _take_up(self, doc: Document) -> None:
        """Look a moved claim's payment up on both processors, unless it is taken up already
        or there is no room (then it waits for `_take_up_moved`)."""
        if doc["_id"] in self._taken:
            return
        if self._dispatcher.full:
            self._moved_untaken = True
            return
        self._taken.add(doc["_id"])
        payment = Payment(doc["_id"], doc["cents"], doc["acceptedMs"])
        self._accepted.add(payment.correlation_id)
        self._dispatcher.adopt(payment)

    async def _take_up_moved(self) -> None:
        """Claims moved here that were not taken up: an answer lost, a renewal failed half
        way, or no room then."""
        self._moved_untaken = False
        query = {
            **self._owned_since(self._purged_at_ms, self.name),
            "takenFrom": {"$exists": True},
        }
        async for doc in self._claims.find(query):
            self._take_up(doc)

    async def _take_over_previous(self, previous: str, known: dict[str, Payment]) -> list[Payment]:
        """This journal's previous run is dead (the journal's lock is ours): its payments are
        this run's, without waiting for its lease to expire. Each one its journal knows goes
        on as the journal says (room for those is kept); one only the store knows is looked up
        on both processors. Returns the payments the journal knows and the store does not:
        accepted, never claimed. Safe to call again after a failure."""
        await self._cluster.update_one({"_id": previous}, {"$set": {"dead": True}})
        while self._dispatcher.room > len(known):
            doc = await self._move_claim(previous)
            if doc is None:
                break
            payment = known.get(doc["_id"])
            if payment is None:
                self._take_up(doc)
            elif doc["_id"] not in self._taken:
                self._taken.add(doc["_id"])
                self._dispatcher.restore([payment])
        await self._take_up_moved()  # a known one among them: looked up, not restored
        rest = [i for i in known if i not in self._taken]
        claims = self._claims.find({"_id": {"$in": rest}}, {"_id": 1})
        claimed = {doc["_id"] async for doc in claims}
        # Claimed by another replica, confirmed, or taken over while this one was down.
        return [known[i] for i in rest if i not in claimed]


async def _patiently(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt`'s result, once the store answers it: a replica cannot start without it."""
    while True:
        try:
            return await attempt()
        except PyMongoError as error:
            log.warning("%s: %s", what, error)
            await asyncio.sleep(1.0)
