"""Taking over a dead replica's payments.

A lease that expired marks a dead replica (rinha/cluster/store/lease.py). A live replica marks
it dead (only if it is still expired: a late renewal wins), then moves its owned claims to
itself MOVE_AT_ONCE at a time (an update conditioned on `owner`, so each claim moves once,
marked `takenFrom`; then the ones it moved are read back), and looks each payment up on both
processors, because the dead replica may have
sent it to either, until `--settle-after` has passed, longer than any of its attempts can
take; found, it is recorded as found, else routed afresh.

A replica restarted on the same journal takes over its previous run at once instead: what the
journal says of each payment (sent where, with which requestedAt) still holds, so only
payments the journal does not know are looked up on both processors.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pymongo.asynchronous.collection import AsyncCollection

from rinha.cluster.store.claims import owned_since
from rinha.payments import Payment

if TYPE_CHECKING:
    from rinha.delivery import Dispatcher

# Before the first purge.
NEVER_PURGED = -1
# Claims moved in one round of a takeover: three round trips each, where one claim at a time
# took one round trip per claim (a dead replica's backlog of thousands took half a minute).
MOVE_AT_ONCE = 200
# A dead lease that owns nothing is deleted this long after it expired.
FORGET_DEAD_AFTER_MS = 60_000

Document = dict[str, Any]


class Takeover:
    def __init__(
        self,
        name: str,
        claims: AsyncCollection[Document],
        leases: AsyncCollection[Document],
        dispatcher: Dispatcher,
        known_ids: dict[str, int],
    ) -> None:
        self._name = name
        self._claims = claims
        self._leases = leases
        self._dispatcher = dispatcher
        self._known_ids = known_ids
        # The moment of the last purge this replica obeyed (the cluster moves it): claims
        # accepted up to it are nobody's to take over.
        self.purged_at_ms = NEVER_PURGED
        # Ids of the claims this run moved to itself from dead runs and took up; claims moved
        # and not taken up (a reply lost, no room) are found again by `take_up_moved`.
        self._taken: set[str] = set()
        self.moved_untaken = False

    async def take_over(self, lease: Document, at_ms: int, deadline: float) -> None:
        """Mark a lease that expired dead (unless it was renewed meanwhile), then move a
        share of its claims here MOVE_AT_ONCE at a time, each looked up on both processors,
        until loop time `deadline`. A dead lease stays, so that a claim its replica stored late is found
        too, until it owns nothing and has been dead a while."""
        dead = lease["_id"]
        if not lease.get("dead"):
            marked = await self._leases.update_one(
                {"_id": dead, "expiresMs": {"$lt": at_ms}}, {"$set": {"dead": True}}
            )
            if not marked.matched_count:
                return  # renewed after all
        loop = asyncio.get_running_loop()
        while loop.time() < deadline and not self._dispatcher.full:
            moved = await self._move_claims(dead, min(self._dispatcher.room, MOVE_AT_ONCE))
            if moved is None:
                if lease["expiresMs"] < at_ms - FORGET_DEAD_AFTER_MS:
                    await self._leases.delete_one({"_id": dead, "dead": True})
                return
            for doc in moved:
                self._take_up(doc)

    async def take_over_previous(self, previous: str, known: dict[str, Payment]) -> list[Payment]:
        """This journal's previous run is dead (the journal's lock is ours): its payments are
        this run's, without waiting for its lease to expire. Each one its journal knows goes
        on as the journal says (restored beyond the buffer's capacity); one only the store
        knows is looked up on both processors, room permitting. Returns the payments the
        journal knows and the store does not: accepted, never claimed. Safe to call again
        after a failure."""
        await self._leases.update_one({"_id": previous}, {"$set": {"dead": True}})
        while not self._dispatcher.full:
            moved = await self._move_claims(previous, MOVE_AT_ONCE)
            if moved is None:
                break
            for doc in moved:
                payment = known.get(doc["_id"])
                if payment is None:
                    self._take_up(doc)
                elif doc["_id"] not in self._taken:
                    self._taken.add(doc["_id"])
                    self._dispatcher.restore([payment])
        await self.take_up_moved()  # a known one among them: looked up, not restored
        rest = [i for i in known if i not in self._taken]
        claims = self._claims.find({"_id": {"$in": rest}}, {"_id": 1})
        claimed = {doc["_id"] async for doc in claims}
        # Claimed by another replica, confirmed, or taken over while this one was down.
        return [known[i] for i in rest if i not in claimed]

    async def take_up_moved(self) -> None:
        """Claims moved here that were not taken up: an answer lost, a renewal failed half
        way, or no room then."""
        self.moved_untaken = False
        query = {**owned_since(self.purged_at_ms, self._name), "takenFrom": {"$exists": True}}
        async for doc in self._claims.find(query):
            self._take_up(doc)

    async def _move_claims(self, dead: str, limit: int) -> list[Document] | None:
        """Up to `limit` of a dead run's claims, made this run's (those another replica
        moves meanwhile are its own), or None when it owns none; marked as moved, so that
        they are taken up even if an answer is lost."""
        owned = owned_since(self.purged_at_ms, dead)
        found = self._claims.find(owned, {"_id": 1}).limit(max(limit, 1))
        ids = [doc["_id"] async for doc in found]
        if not ids:
            return None
        untaken, self.moved_untaken = self.moved_untaken, True
        await self._claims.update_many(
            {**owned, "_id": {"$in": ids}}, {"$set": {"owner": self._name, "takenFrom": dead}}
        )
        ours = {"_id": {"$in": ids}, "owner": self._name, "takenFrom": dead}
        moved = [doc async for doc in self._claims.find(ours)]
        self.moved_untaken = untaken
        return moved

    def _take_up(self, doc: Document) -> None:
        """Look a moved claim's payment up on both processors, unless it is taken up already
        or there is no room (then it waits for `take_up_moved`)."""
        if doc["_id"] in self._taken:
            return
        if self._dispatcher.full:
            self.moved_untaken = True
            return
        self._taken.add(doc["_id"])
        payment = Payment(doc["_id"], doc["cents"], doc["acceptedMs"])
        self._known_ids[payment.correlation_id] = payment.accepted_ms
        self._dispatcher.adopt(payment)
