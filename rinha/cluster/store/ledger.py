"""The MongoDB ledger: one collection that every replica writes and any replica reads, in the
database that also holds the replicas' claims and leases (rinha/store.py).

Strategy. `record` only appends a document to a list and returns. One background task, the
writer, wakes when that list is not empty, waits `FLUSH_INTERVAL` to gather a batch, and
writes it with one `insert_many(ordered=False)` (`BATCH_LIMIT` documents at most). What does
not land is put back in front of the list and written again, with newer documents, after a
growing pause: records made while the store is down land when it returns. The official
audit reads windows that end 1.5–2 s before now (SPEC.md §4), so a payment must be visible
well within that; a flush every 20 ms adds that much to the time between a processor's 200
and the payment counting.

Each document's `_id` is the payment's correlationId. A batch written again after its
acknowledgement was lost, a journal replayed after a restart, or a payment two replicas both
saw confirmed, stores nothing twice: the duplicate-key errors they meet mean "already there".

A document also keeps when its payment was accepted (`acceptedMs`, the accepting replica's wall
clock). A purge stores its moment in the `cluster` collection and deletes what was accepted up
to then; a summary counts only payments accepted after the last purge, so that a replica still
delivering what it accepted before the purge, because it has not seen the purge yet, adds
nothing. A confirmation ends the payment's claim: the same write clears the claim's owner, so
no replica takes over a payment that is confirmed.

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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bson.datetime_ms import DatetimeMS
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import BulkWriteError, PyMongoError

from rinha.clock import now_ms
from rinha.ledger import LedgerUnavailable, Summary, Totals, empty_summary

log = logging.getLogger("rinha")

FLUSH_INTERVAL = 0.02
# At most this many documents per insert_many, so that the backlog of an outage is written
# in pieces that each finish within OPERATION_TIMEOUT_MS, rather than one write that times
# out, is sent again whole, and times out again. In the contest a flush holds a handful.
BATCH_LIMIT = 1000
# After a failed write or index build; doubled up to the last value.
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 1.0
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
# Owned claims are pending payments: few, found by owner (rinha/store.py).
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
        self._unwritten: list[Document] = []
        self._unended: list[str] = []  # ids of stored payments whose claims still have owners
        self._has_unwritten = asyncio.Event()
        # Counts forgets: a batch taken before one is not put back when its write fails.
        self._forgets = 0
        # Held by one write attempt or one purge: a purge never races a batch in flight.
        self._writing = asyncio.Lock()
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    def record(
        self,
        correlation_id: str,
        processor: str,
        requested_at_ms: int,
        cents: int,
        accepted_ms: int,
    ) -> None:
        self._unwritten.append(
            {
                "_id": correlation_id,
                "processor": processor,
                "requestedAt": DatetimeMS(requested_at_ms),
                "requestedAtMs": requested_at_ms,
                "cents": cents,
                "acceptedMs": accepted_ms,
            }
        )
        self._has_unwritten.set()

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        try:
            purged_at_ms = await self.purged_at_ms()
        except PyMongoError as error:
            raise LedgerUnavailable(f"summary failed: {error}") from error
        return await self.confirmed(from_ms, to_ms, purged_at_ms)

    async def confirmed(
        self, from_ms: int | None, to_ms: int | None, purged_at_ms: int
    ) -> Summary:
        """The payments accepted after `purged_at_ms` and confirmed in the window."""
        if self._writer.done():
            self._writer.result()  # the writer only ends by a bug: raise it here
        window = {
            "$gte": LOWEST_MS if from_ms is None else from_ms,
            "$lte": HIGHEST_MS if to_ms is None else to_ms,
        }
        pipeline: list[Document] = [
            {"$match": {"requestedAtMs": window, "acceptedMs": {"$gt": purged_at_ms}}},
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

    def forget(self) -> None:
        self._unwritten.clear()
        self._unended.clear()
        self._has_unwritten.clear()
        self._forgets += 1

    async def purge(self) -> None:
        """Forget every payment accepted up to now, on every replica: stored, not yet written,
        and claimed. A batch being written finishes first and is deleted with the rest."""
        at_ms = now_ms()
        async with self._writing:
            try:
                await self._cluster.update_one(
                    {"_id": PURGE_ID}, {"$max": {"atMs": at_ms}}, upsert=True
                )
                self.forget()
                forgotten = {"acceptedMs": {"$lte": at_ms}}
                await self._payments.delete_many(forgotten)
                await self._claims.delete_many(forgotten)
            except PyMongoError as error:
                raise LedgerUnavailable(f"purge failed: {error}") from error

    async def close(self) -> None:
        """Stop the writer, write what is unwritten unless a write fails, and disconnect."""
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            pass
        while (self._unwritten or self._unended) and await self._write_once():
            pass
        if self._unwritten:
            log.warning("closing with %d payments not written to the ledger", len(self._unwritten))
        await self._client.close()

    # the writer

    async def _write_forever(self) -> None:
        await _until_done(self._create_index)
        while True:
            await self._has_unwritten.wait()
            await asyncio.sleep(FLUSH_INTERVAL)
            await _until_done(self._write_once)

    async def _create_index(self) -> bool:
        try:
            await self._payments.create_index(INDEX)
            await self._claims.create_index(CLAIMS_INDEX)
        except PyMongoError as error:
            log.warning("ledger index not created yet: %s", error)
            return False
        return True

    async def _write_once(self) -> bool:
        """Write the oldest unwritten documents, then end their claims; True when all of
        those are stored now and every claim of a stored payment is ended."""
        async with self._writing:
            forgets = self._forgets
            batch = self._unwritten[:BATCH_LIMIT]
            del self._unwritten[:BATCH_LIMIT]
            failed: list[Document] = []
            try:
                if batch:
                    await self._payments.insert_many(batch, ordered=False)
            except BulkWriteError as error:
                failed = _not_stored(batch, error.details)
            except PyMongoError as error:
                failed = batch
                log.warning("ledger write of %d payments failed: %s", len(batch), error)
            except asyncio.CancelledError:
                if forgets == self._forgets:
                    self._unwritten[:0] = batch
                raise
            if failed and forgets == self._forgets:
                self._unwritten[:0] = failed
            self._unended += [doc["_id"] for doc in batch if doc not in failed]
            ended = await self._end_claims()
            if self._unwritten or self._unended:
                self._has_unwritten.set()
            else:
                self._has_unwritten.clear()
            return ended and not failed

    async def _end_claims(self) -> bool:
        """A stored payment's claim is over (rinha/store.py): its owner goes, or a replica
        would take it over and count it pending. True when none is left to end."""
        ids = self._unended[:BATCH_LIMIT]
        if not ids:
            return True
        try:
            await self._claims.update_many({"_id": {"$in": ids}}, {"$unset": {"owner": ""}})
        except PyMongoError as error:
            log.warning("claims of %d confirmed payments not ended yet: %s", len(ids), error)
            return False
        del self._unended[: len(ids)]
        return not self._unended


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


async def _until_done(attempt: Callable[[], Awaitable[bool]]) -> None:
    delay = FIRST_RETRY_DELAY
    while not await attempt():
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_DELAY)
