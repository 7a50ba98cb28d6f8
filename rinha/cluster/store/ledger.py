"""The MongoDB ledger: one collection that every replica writes and any replica reads, in the
database that also holds the replicas' claims and leases (rinha/cluster/store/).

Strategy. `record` only hands a document to a batch writer (rinha/cluster/store/batches.py),
which stores it with the others of its 20 ms in one `insert_many(ordered=False)`, and again
after a failure: records made while the store is down land when it returns. The official
audit reads windows that end 1.5–2 s before now (SPEC.md §4), so a payment must be visible
well within that; a flush every 20 ms adds that much to the time between a processor's 200
and the payment counting.

Each document's `_id` is the payment's correlationId. A batch written again after its
acknowledgement was lost, a journal replayed after a restart, or a payment two replicas both
saw confirmed, stores nothing twice: the duplicate-key errors they meet mean "already there".
But for one case: a document of the same id accepted earlier is from before a purge (an id is
answered 202 once between purges), written late by a replica still delivering it; the newer
acceptance replaces it, or that id would never count again.

A document also keeps when its payment was accepted (`acceptedMs`, the accepting replica's wall
clock). A purge stores its moment in the `cluster` collection and deletes what was accepted up
to then; a summary counts only payments accepted after the last purge, so that a replica still
delivering what it accepted before the purge, because it has not seen the purge yet, adds
nothing. A stored confirmation ends the payment's claim (one more batch writer clears the
claim's owner), so no replica takes over a payment that is confirmed. A purge keeps what was
accepted after its moment, written or not.

requestedAt is kept twice: as a BSON date for people reading the collection, and as integer
epoch milliseconds, which the summary ranges on (exact on every server version). A summary is
one aggregation, `$match` on that integer then `$group` by processor; the index holds every
field the aggregation reads, so MongoDB can answer it from the index alone.

A summary or purge that the store cannot answer raises `LedgerUnavailable` within about a
second (`OPERATION_TIMEOUT_MS`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from rinha.cluster.store.batches import FIRST_RETRY_DELAY, MAX_RETRY_DELAY, BatchWriter
from rinha.ledger import LedgerUnavailable, Summary, Totals, empty_summary

log = logging.getLogger("rinha")

# Every operation, the driver's own retry included, gives up after OPERATION_TIMEOUT_MS
# (client-side operation timeout), so a dead store is reported within about a second. A live
# store answers a summary in milliseconds; a write that times out is simply written again.
OPERATION_TIMEOUT_MS = 1000
SERVER_SELECTION_TIMEOUT_MS = 1000
CONNECT_TIMEOUT_MS = 1000
DATABASE = "rinha"  # unless the URL names one
COLLECTION = "payments"
CLAIMS = "claims"
CLUSTER = "cluster"
PURGE_ID = "purge"  # in CLUSTER: {"atMs": the moment of the last purge}
INDEX = [
    ("requestedAtMs", ASCENDING),
    ("processor", ASCENDING),
    ("cents", ASCENDING),
    ("acceptedMs", ASCENDING),
]
# Owned claims are pending payments: few, found by owner (rinha/cluster/store/).
CLAIMS_INDEX = [("owner", ASCENDING)]
DUPLICATE_KEY = 11000
# Stands for an open side of the window; BSON integers are signed 64-bit.
LOWEST_MS, HIGHEST_MS = -(2**63), 2**63 - 1

Document = dict[str, Any]


class MongoLedger:
    def __init__(self, url: str) -> None:
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
            connectTimeoutMS=CONNECT_TIMEOUT_MS,
            timeoutMS=OPERATION_TIMEOUT_MS,
        )
        self.database = self._client.get_default_database(DATABASE)
        self._payments = self.database[COLLECTION]
        self._claims = self.database[CLAIMS]
        self._cluster = self.database[CLUSTER]
        self._confirmations: BatchWriter[Document] = BatchWriter(
            "confirmed payments", self._insert
        )
        # Stored payments whose claims still have owners: (id, acceptedMs).
        self._claim_ends: BatchWriter[tuple[str, int]] = BatchWriter(
            "ends of claims", self._end_claims
        )
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    def record(
        self,
        correlation_id: str,
        processor: str,
        requested_at_ms: int,
        cents: int,
        accepted_ms: int,
    ) -> None:
        self._confirmations.add(
            {
                "_id": correlation_id,
                "processor": processor,
                "requestedAt": DatetimeMS(requested_at_ms),
                "requestedAtMs": requested_at_ms,
                "cents": cents,
                "acceptedMs": accepted_ms,
            }
        )

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        try:
            purged_at_ms = await self.purged_at_ms()
        except PyMongoError as error:
            raise LedgerUnavailable(f"summary failed: {error}") from error
        return await self.confirmed(from_ms, to_ms, purged_at_ms)

    async def confirmed(
        self,
        from_ms: int | None,
        to_ms: int | None,
        purged_at_ms: int,
        excluded: Sequence[str] = (),
    ) -> Summary:
        """The payments accepted after `purged_at_ms` and confirmed in the window, but for
        the `excluded` ids."""
        window = {
            "$gte": LOWEST_MS if from_ms is None else from_ms,
            "$lte": HIGHEST_MS if to_ms is None else to_ms,
        }
        pipeline: list[Document] = [
            {
                "$match": {
                    "requestedAtMs": window,
                    "acceptedMs": {"$gt": purged_at_ms},
                    **({"_id": {"$nin": list(excluded)}} if excluded else {}),
                }
            },
            {"$group": {"_id": "$processor", "count": {"$sum": 1}, "cents": {"$sum": "$cents"}}},
        ]
        try:
            cursor = await self._payments.aggregate(pipeline)
            rows = await cursor.to_list()
        except PyMongoError as error:
            raise LedgerUnavailable(f"summary failed: {error}") from error
        totals = empty_summary()
        for row in rows:
            if row["_id"] in totals:
                totals[row["_id"]] = Totals(row["count"], row["cents"])
        return totals

    async def purged_at_ms(self) -> int:
        purge = await self._cluster.find_one({"_id": PURGE_ID})
        # Before any purge: every payment counts, one from a journal without accepted_ms too.
        return -1 if purge is None else int(purge["atMs"])

    async def purge(self) -> int:
        """Forget every payment accepted up to now, on every replica: stored, not yet written,
        and claimed. A batch being written finishes first and is deleted with the rest. The
        purge's moment, by the store's clock."""
        async with self._confirmations.paused(), self._claim_ends.paused():
            try:
                # The store's clock: acceptances are stamped in it (rinha/cluster/store/lease.py).
                marker = await self._cluster.find_one_and_update(
                    {"_id": PURGE_ID},
                    [{"$set": {"atMs": {"$max": ["$atMs", {"$toLong": "$$NOW"}]}}}],
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                assert marker is not None  # upserted, and returned as it is after
                at_ms = int(marker["atMs"])
                self._confirmations.forget(lambda doc: doc["acceptedMs"] > at_ms)
                self._claim_ends.forget(lambda end: end[1] > at_ms)
                forgotten = {"acceptedMs": {"$lte": at_ms}}
                await self._payments.delete_many(forgotten)
                await self._claims.delete_many(forgotten)
            except PyMongoError as error:
                raise LedgerUnavailable(f"purge failed: {error}") from error
        return at_ms

    async def close(self) -> None:
        """Stop the writers, write what is unwritten unless a write fails, and disconnect."""
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self._confirmations.flush()
        await self._claim_ends.flush()
        await self._client.close()

    async def _write_forever(self) -> None:
        delay = FIRST_RETRY_DELAY
        while not await self._create_indexes():
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
        await asyncio.gather(self._confirmations.write_forever(), self._claim_ends.write_forever())

    async def _create_indexes(self) -> bool:
        try:
            await self._payments.create_index(INDEX)
            await self._claims.create_index(CLAIMS_INDEX)
        except PyMongoError as error:
            log.warning("ledger index not created yet: %s", error)
            return False
        return True

    async def _insert(self, batch: list[Document]) -> list[Document]:
        """Store confirmed payments; their claims end next. The ones not stored."""
        try:
            await self._payments.insert_many(batch, ordered=False)
            failed = []
        except BulkWriteError as error:
            failed = _not_stored(batch, error.details)
            duplicates = [batch[index] for index in _duplicates(error.details)]
            failed += await self._replace_older(duplicates)
        for doc in batch:
            if doc not in failed:
                self._claim_ends.add((doc["_id"], doc["acceptedMs"]))
        return failed

    async def _replace_older(self, duplicates: list[Document]) -> list[Document]:
        """Of the documents refused as duplicate keys, those whose stored namesake was
        accepted earlier, before a purge, take its place (mostly there are none: a restart's
        replayed journal meets itself). The ones whose namesake a purge deleted meanwhile, to
        be written again."""
        if not duplicates:
            return []
        ids = [doc["_id"] for doc in duplicates]
        stored = self._payments.find({"_id": {"$in": ids}}, {"acceptedMs": 1})
        accepted = {doc["_id"]: doc["acceptedMs"] async for doc in stored}
        for doc in duplicates:
            if doc["_id"] in accepted and accepted[doc["_id"]] < doc["acceptedMs"]:
                older = {"_id": doc["_id"], "acceptedMs": {"$lt": doc["acceptedMs"]}}
                await self._payments.replace_one(older, doc)
        return [doc for doc in duplicates if doc["_id"] not in accepted]

    async def _end_claims(self, ends: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """A stored payment's claim is over (rinha/cluster/store/claims.py): its owner goes,
        or a replica would take it over and count it pending."""
        # The claim of this acceptance: one of the same id accepted again after a purge is
        # another payment's.
        ended = {"$unset": {"owner": ""}}
        updates = [UpdateOne({"_id": i, "acceptedMs": at}, ended) for i, at in ends]
        await self._claims.bulk_write(updates, ordered=False)
        return []


def _duplicates(details: Mapping[str, Any]) -> list[int]:
    """The indices in an unordered bulk insert of the documents refused as duplicate keys."""
    errors = details.get("writeErrors", ())
    return [error["index"] for error in errors if error.get("code") == DUPLICATE_KEY]


def _not_stored(batch: list[Document], details: Mapping[str, Any]) -> list[Document]:
    """The documents of an unordered bulk insert that are not in the collection.

    With `ordered=False` every document without a write error was inserted, and one refused
    as a duplicate key is there already. A write-concern error leaves the outcome of the whole
    batch unknown, so all of it goes again (harmless: duplicates are recognised).
    """
    if details.get("writeConcernErrors"):
        return batch
    failed = [e for e in details.get("writeErrors", ()) if e.get("code") != DUPLICATE_KEY]
    for error in failed:
        log.warning("ledger write refused: %s", error.get("errmsg"))
    return [batch[error["index"]] for error in failed]
