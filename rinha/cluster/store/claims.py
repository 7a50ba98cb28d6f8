"""Claims: a payment is charged once across replicas with no affinity between them.

`claims` holds one document per correlationId: `{_id, owner, cents, acceptedMs}`. A replica
answers 202 after its journal line, as always, and its claims are inserted off the POST path,
batched every 20 ms (rinha/cluster/store/batches.py) into one `insert_many(ordered=False)`. A payment is sent only after its
claim is stored (it is CLAIMING until then); when another replica's claim on the same id is
there first, this replica's copy is THEIRS and dropped. A confirmation clears the claim's
owner (rinha/cluster/store/ledger.py), so the owned claims are exactly the pending payments.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import BulkWriteError, PyMongoError

from rinha.cluster.store.batches import BatchWriter
from rinha.cluster.store.ledger import CLAIMS, DUPLICATE_KEY, MongoLedger
from rinha.ledger import LedgerUnavailable, Totals
from rinha.payments import Ownership, Payment

if TYPE_CHECKING:
    from rinha.delivery import Dispatcher

log = logging.getLogger("rinha")

# Between attempts to store the last claims of a replica that is taken over.
HAND_OVER_RETRY = 0.5

Document = dict[str, Any]


def owned_since(purged_at_ms: int, owner: str | None = None) -> Document:
    """Claims of pending payments accepted after the last purge (of `owner`'s, if given)."""
    owned: Any = {"$exists": True} if owner is None else owner
    return {"owner": owned, "acceptedMs": {"$gt": purged_at_ms}}


class Claims:
    def __init__(self, ledger: MongoLedger, name: str, dispatcher: Dispatcher) -> None:
        self._ledger = ledger
        self.collection: AsyncCollection[Document] = ledger.database[CLAIMS]
        self._name = name
        self._dispatcher = dispatcher
        self._writer: BatchWriter[Payment] = BatchWriter("claims", self._write)

    def claim(self, payment: Payment) -> None:
        """Claim an accepted payment in the store; it waits in the dispatcher meanwhile."""
        payment.ownership = Ownership.CLAIMING
        self._writer.add(payment)

    def forget(self, up_to_ms: int) -> None:
        """A purge: claims of payments accepted up to then are not written."""
        self._writer.forget(lambda payment: payment.accepted_ms > up_to_ms)

    async def pending(self, purged_at_ms: int) -> Totals:
        """The owned claims, plus this replica's own payments whose claims are not stored yet
        (another replica's are missing for those few milliseconds)."""
        claiming = [p for p in self._writer.unwritten if p.ownership is Ownership.CLAIMING]
        pending = Totals(len(claiming), sum(payment.cents for payment in claiming))
        try:
            cursor = await self.collection.aggregate(
                [
                    {"$match": owned_since(purged_at_ms)},
                    {"$group": {"_id": None, "count": {"$sum": 1}, "cents": {"$sum": "$cents"}}},
                ]
            )
            for row in await cursor.to_list():
                pending = pending + Totals(row["count"], row["cents"])
        except PyMongoError as error:
            raise LedgerUnavailable(f"summary failed: {error}") from error
        return pending

    def unsettled(self, silent: list[str], purged_at_ms: int) -> AsyncCursor[Document]:
        """The claims of pending payments the `silent` replicas own, or that were taken over
        from a dead one (rinha/cluster/store/takeover.py), accepted after the last purge."""
        owners = [
            {"owner": {"$in": silent}},
            {"owner": {"$exists": True}, "takenFrom": {"$exists": True}},
        ]
        query = {"$or": owners, "acceptedMs": {"$gt": purged_at_ms}}
        return self.collection.find(query, {"cents": 1})

    async def write_forever(self) -> None:
        await self._writer.write_forever()

    async def hand_over(self) -> None:
        """Store every claim still unwritten, however long the store takes: this replica's
        lease is dead, so the others take over what it owns, and a payment it answered 202
        for without a claim would be in its journal only."""
        while self._writer.unwritten:
            if not await self._writer.write_once():
                await asyncio.sleep(HAND_OVER_RETRY)

    async def _write(self, batch: list[Payment]) -> list[Payment]:
        """Store the batch's claims; the payments to claim again (an id claimed before a
        purge that this replica had not seen yet)."""
        batch = [payment for payment in batch if payment.ownership is Ownership.CLAIMING]
        docs = [
            {
                "_id": payment.correlation_id,
                "owner": self._name,
                "cents": payment.cents,
                "acceptedMs": payment.accepted_ms,
            }
            for payment in batch
        ]
        taken: set[int] = set()
        try:
            if docs:
                await self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", ())
            if error.details.get("writeConcernErrors") or any(
                e.get("code") != DUPLICATE_KEY for e in errors
            ):
                raise
            taken = {e["index"] for e in errors}
        for index, payment in enumerate(batch):
            if index not in taken:
                payment.ownership = Ownership.OURS
        again = []
        if taken:
            await self._settle_duplicates([batch[index] for index in taken])
            again = [batch[i] for i in taken if batch[i].ownership is Ownership.CLAIMING]
        self._dispatcher.wake()
        return again

    async def _settle_duplicates(self, payments: list[Payment]) -> None:
        """Claims refused because the id is claimed already: whose is it?"""
        ids = [payment.correlation_id for payment in payments]
        claims = {doc["_id"]: doc async for doc in self.collection.find({"_id": {"$in": ids}})}
        purged_at_ms = await self._ledger.purged_at_ms()
        for payment in payments:
            claim = claims.get(payment.correlation_id)
            if claim is None:
                continue  # purged since: claimed again with the next batch
            if claim["acceptedMs"] <= purged_at_ms:
                # Claimed before a purge by a replica that had not seen it yet: the id is free.
                forgotten = {"$lte": purged_at_ms}
                await self.collection.delete_one(
                    {"_id": payment.correlation_id, "acceptedMs": forgotten}
                )
                continue  # claimed again with the next batch
            # This run's own claim, stored by a write whose answer was lost; or another
            # replica's (owned by it, confirmed, or taken over here from a dead one, which
            # the copy taken over delivers): this copy is dropped.
            ours = claim.get("owner") == self._name and "takenFrom" not in claim
            payment.ownership = Ownership.OURS if ours else Ownership.THEIRS
