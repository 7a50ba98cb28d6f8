"""The ledger contract (rinha/ledger/__init__.py), the same cases against every store.

- embedded: `EmbeddedLedger`, in-process.
- mongodb: `MongoLedger` over a real socket to a real server: the SecantusDB stand-in for
  MongoDB (tests/support/clusters.py says how it is found and why it is a stand-in), or the
  MongoDB RINHA_TEST_MONGO_URL names; the cases that stop the store then skip, since they
  cannot stop a server they did not start.

A MongoDB ledger writes in the background, so a record is awaited until the summary shows it,
within `VISIBLE_WITHIN` (the audit reads windows ending 1.5 s before now, SPEC.md §4). That a
record did *not* count is checked after a later record became visible: batches are written
in order, so everything recorded before it has been written or refused by then.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest
import uvloop

from rinha.clock import now_ms, parse_us
from rinha.cluster.store.ledger import MongoLedger
from rinha.ledger import Ledger, LedgerUnavailable, Summary, Totals
from rinha.ledger.embedded import EmbeddedLedger
from tests.support.clients import Service
from tests.support.clusters import StandIn, with_database

VISIBLE_WITHIN = 1.0
# A dead store must answer (with LedgerUnavailable) well before a client gives up.
UNAVAILABLE_WITHIN = 2.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Accepted long before any purge a test makes.
ACCEPTED_MS = 1


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """On uvloop, like the service: MongoLedger is made inside the running loop."""
    uvloop.run(coroutine)


def totals(**by_processor: tuple[int, int]) -> Summary:
    found = {"default": Totals(), "fallback": Totals()}
    for name, (count, cents) in by_processor.items():
        found[name] = Totals(count, cents)
    return found


async def until_visible(
    ledger: Ledger, expected: Summary, window: tuple[int | None, int | None] = (None, None)
) -> None:
    """Until the summary over `window` is `expected`; fails after VISIBLE_WITHIN."""
    deadline = time.monotonic() + VISIBLE_WITHIN
    while (found := await ledger.summary(*window)) != expected:
        assert time.monotonic() < deadline, f"after {VISIBLE_WITHIN} s: {found} != {expected}"
        await asyncio.sleep(0.01)


def open_ledger(url: str | None) -> Ledger:
    """The embedded ledger, or MongoDB's at `url`."""
    return EmbeddedLedger() if url is None else MongoLedger(url)


def new_id() -> str:
    return str(uuid.uuid4())


# The stores


@pytest.fixture(params=["embedded", "mongodb"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    """What `RINHA_LEDGER` would hold: nothing (embedded), or a fresh database per test."""
    if request.param == "embedded":
        return None
    base = request.getfixturevalue("mongo_url")
    return with_database(base, f"contract_{uuid.uuid4().hex[:12]}")


# The contract, for every store


def test_summary_counts_and_adds_cents_per_processor(ledger_url: str | None) -> None:
    async def case() -> None:
        ledger = open_ledger(ledger_url)
        for cents in (1990, 2005, 1):
            ledger.record(new_id(), "default", 1_752_582_896_000, cents, ACCEPTED_MS)
        for cents in (1990, 10):
            ledger.record(new_id(), "fallback", 1_752_582_896_001, cents, ACCEPTED_MS)
        await until_visible(ledger, totals(default=(3, 3996), fallback=(2, 2000)))
        await ledger.close()

    run(case())


def test_window_is_inclusive_at_both_ends(ledger_url: str | None) -> None:
    async def case() -> None:
        ledger = open_ledger(ledger_url)
        for at in (999, 1000, 1500, 2000, 2001):
            ledger.record(new_id(), "default", at, 100, ACCEPTED_MS)
        await until_visible(ledger, totals(default=(5, 500)))
        assert await ledger.summary(1000, 2000) == totals(default=(3, 300))
        assert await ledger.summary(1000, 1000) == totals(default=(1, 100))
        assert await ledger.summary(2001, 2001) == totals(default=(1, 100))
        assert await ledger.summary(1001, 1499) == totals()
        assert await ledger.summary(2000, 1000) == totals()
        await ledger.close()

    run(case())


def test_either_side_of_the_window_may_be_open(ledger_url: str | None) -> None:
    async def case() -> None:
        ledger = open_ledger(ledger_url)
        for at in (-5, 0, 1_752_582_896_000):
            ledger.record(new_id(), "fallback", at, 7, ACCEPTED_MS)
        await until_visible(ledger, totals(fallback=(3, 21)))
        assert await ledger.summary(None, 0) == totals(fallback=(2, 14))
        assert await ledger.summary(1, None) == totals(fallback=(1, 7))
        assert await ledger.summary(None, -6) == totals()
        assert await ledger.summary(1_752_582_896_001, None) == totals()
        await ledger.close()

    run(case())


def test_out_of_order_records_match_a_brute_force_count(ledger_url: str | None) -> None:
    rng = random.Random(6)
    entries = []
    for index in range(300):
        # Confirmations arrive out of requestedAt order, some of them by seconds.
        at = 10 * index + rng.randint(-3000, 30)
        entries.append(
            (new_id(), rng.choice(["default", "fallback"]), at, rng.randint(1, 9999), ACCEPTED_MS)
        )

    def brute(low: int | None, high: int | None) -> Summary:
        found = totals()
        for _, name, at, cents, _ in entries:
            if (low is None or at >= low) and (high is None or at <= high):
                found[name] = found[name] + Totals(1, cents)
        return found

    async def case() -> None:
        ledger = open_ledger(ledger_url)
        for entry in entries:
            ledger.record(*entry)
        await until_visible(ledger, brute(None, None))
        for _ in range(40):
            low = rng.choice([None, rng.randint(-3100, 3100)])
            high = rng.choice([None, rng.randint(-3100, 3100)])
            assert await ledger.summary(low, high) == brute(low, high), (low, high)
        await ledger.close()

    run(case())


def test_a_replayed_journal_counts_each_payment_once(ledger_url: str | None) -> None:
    """A replica restarted from its journal records its confirmed payments again; a shared
    store already holds them, and must not count them twice."""
    paid = [(new_id(), "default", 1000 + i, 1990, ACCEPTED_MS) for i in range(5)]
    later = (new_id(), "fallback", 2000, 5, ACCEPTED_MS)

    async def case() -> None:
        before = open_ledger(ledger_url)
        for entry in paid:
            before.record(*entry)
        await until_visible(before, totals(default=(5, 9950)))
        await before.close()
        restarted = open_ledger(ledger_url)
        for entry in paid:
            restarted.record(*entry)
        restarted.record(*later)
        await until_visible(restarted, totals(default=(5, 9950), fallback=(1, 5)))
        await restarted.close()

    run(case())


def test_a_payment_recorded_twice_counts_once_in_a_shared_store(ledger_url: str | None) -> None:
    """Two replicas may both learn that one payment was stored (after a replica died and its
    payment was sent again); in a shared store the first record stands."""

    if ledger_url is None:
        pytest.skip("the embedded ledger relies on the dispatcher recording a payment once")

    async def case() -> None:
        first, second = open_ledger(ledger_url), open_ledger(ledger_url)
        twice = new_id()
        first.record(twice, "default", 1000, 1990, ACCEPTED_MS)
        second.record(twice, "default", 1000, 1990, ACCEPTED_MS)
        first.record(twice, "fallback", 1001, 1990, ACCEPTED_MS)
        await until_visible(first, totals(default=(1, 1990)))
        second.record(new_id(), "fallback", 3000, 1, ACCEPTED_MS)
        await until_visible(second, totals(default=(1, 1990), fallback=(1, 1)))
        await first.close()
        await second.close()

    run(case())


def test_purge_forgets_stored_and_not_yet_written_payments(ledger_url: str | None) -> None:
    async def case() -> None:
        ledger = open_ledger(ledger_url)
        ledger.record(new_id(), "default", 1000, 1990, now_ms())
        await until_visible(ledger, totals(default=(1, 1990)))
        # In a background store: unwritten yet.
        ledger.record(new_id(), "default", 1001, 1990, now_ms())
        await ledger.purge()
        assert await ledger.summary(None, None) == totals()
        ledger.record(new_id(), "fallback", 1002, 3, now_ms() + 1)
        await until_visible(ledger, totals(fallback=(1, 3)))
        await ledger.close()

    run(case())


def test_a_purge_keeps_the_unwritten_records_of_payments_accepted_after_it(
    ledger_url: str | None,
) -> None:
    """(issue 22, H8) A purge takes its moment, then waits for the store: a payment accepted
    meanwhile, confirmed and recorded, is not the purge's to forget, written or not."""

    async def case() -> None:
        ledger = open_ledger(ledger_url)
        ledger.record(new_id(), "default", 1000, 1990, now_ms())
        ledger.record(new_id(), "fallback", 1001, 5, now_ms() + 60_000)  # after the purge
        await ledger.purge()
        await until_visible(ledger, totals(fallback=(1, 5)))
        await ledger.close()

    run(case())


def test_a_payment_accepted_before_a_purge_and_recorded_after_it_is_not_counted(
    mongo_url: str,
) -> None:
    """Another replica may deliver a payment it accepted before a purge it has not seen yet:
    the shared store leaves it out of every summary."""

    async def case() -> None:
        url = with_database(mongo_url, f"contract_{uuid.uuid4().hex[:12]}")
        purger, late = open_ledger(url), open_ledger(url)
        accepted_ms = now_ms()
        await purger.purge()
        late.record(new_id(), "default", 1000, 1990, accepted_ms)
        late.record(new_id(), "fallback", 1001, 5, now_ms() + 1)
        await until_visible(purger, totals(fallback=(1, 5)))
        await purger.close()
        await late.close()

    run(case())


def test_an_id_accepted_again_after_a_purge_counts_though_its_late_record_came_first(
    mongo_url: str,
) -> None:
    """(issue 22, H9) The late record of a payment accepted before a purge kept its id: the
    same id accepted after the purge and confirmed met a duplicate key, and never counted."""

    async def case() -> None:
        url = with_database(mongo_url, f"contract_{uuid.uuid4().hex[:12]}")
        purger, late = open_ledger(url), open_ledger(url)
        again = new_id()
        accepted_before_ms = now_ms()
        await purger.purge()
        late.record(again, "default", 1000, 1990, accepted_before_ms)
        late.record(new_id(), "fallback", 1001, 5, now_ms() + 1)
        await until_visible(purger, totals(fallback=(1, 5)))
        purger.record(again, "default", 1002, 1990, now_ms() + 1)
        await until_visible(purger, totals(default=(1, 1990), fallback=(1, 5)))
        # Later still, the old acceptance's record replaces nothing.
        late.record(again, "default", 1000, 1990, accepted_before_ms)
        late.record(new_id(), "fallback", 1003, 5, now_ms() + 1)
        await until_visible(purger, totals(default=(1, 1990), fallback=(2, 10)))
        await purger.close()
        await late.close()

    run(case())


def test_the_late_record_of_an_earlier_acceptance_leaves_a_newer_claim_owned(
    mongo_url: str,
) -> None:
    """(issue 22, H9) A stored confirmation ends its payment's claim (rinha/cluster/store/):
    the late record of an acceptance from before a purge ended the claim of the same id
    accepted after it, still pending, which then counted nowhere and could not be taken over."""
    url = with_database(mongo_url, f"contract_{uuid.uuid4().hex[:12]}")
    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=2000)
    claims = client.get_default_database()["claims"]

    async def case() -> None:
        purger, late = open_ledger(url), open_ledger(url)
        again = new_id()
        accepted_before_ms = now_ms()
        await purger.purge()
        accepted_ms = now_ms() + 1
        claims.insert_one(
            {"_id": again, "owner": "replica:r", "cents": 1990, "acceptedMs": accepted_ms}
        )
        late.record(again, "default", 1000, 1990, accepted_before_ms)
        late.record(new_id(), "fallback", 1001, 5, now_ms() + 1)
        await until_visible(purger, totals(fallback=(1, 5)))
        deadline = time.monotonic() + VISIBLE_WITHIN  # the claims' ends follow the records
        while time.monotonic() < deadline:
            assert claims.find_one({"_id": again})["owner"] == "replica:r"
            await asyncio.sleep(0.05)
        purger.record(again, "default", 1002, 1990, accepted_ms)
        await until_visible(purger, totals(default=(1, 1990), fallback=(1, 5)))
        deadline = time.monotonic() + VISIBLE_WITHIN
        while "owner" in claims.find_one({"_id": again}):
            assert time.monotonic() < deadline, "the claim of the payment recorded is not over"
            await asyncio.sleep(0.05)
        await purger.close()
        await late.close()

    run(case())


# A store that goes away (MongoDB only: the embedded ledger has no store to lose)


def test_a_summary_while_the_store_is_down_is_refused_quickly(
    stoppable_stand_in: StandIn,
) -> None:
    async def case() -> None:
        ledger = open_ledger(with_database(stoppable_stand_in.url, "down"))
        ledger.record(new_id(), "default", 1000, 1990, ACCEPTED_MS)
        await until_visible(ledger, totals(default=(1, 1990)))
        stoppable_stand_in.stop()
        for attempt in (ledger.summary(None, None), ledger.purge()):
            started = time.monotonic()
            with pytest.raises(LedgerUnavailable):
                await attempt
            assert time.monotonic() - started < UNAVAILABLE_WITHIN
        await ledger.close()

    run(case())


def test_records_made_while_the_store_is_down_land_when_it_returns(
    stoppable_stand_in: StandIn,
) -> None:
    async def case() -> None:
        ledger = open_ledger(with_database(stoppable_stand_in.url, "outage"))
        ledger.record(new_id(), "default", 1000, 1990, ACCEPTED_MS)
        await until_visible(ledger, totals(default=(1, 1990)))
        stoppable_stand_in.stop()
        ledger.record(new_id(), "default", 1001, 1990, ACCEPTED_MS)
        ledger.record(new_id(), "fallback", 1002, 5, ACCEPTED_MS)
        with pytest.raises(LedgerUnavailable):
            await ledger.summary(None, None)
        await asyncio.to_thread(stoppable_stand_in.start)
        # The writer retries at most a second apart, then needs one flush.
        deadline = time.monotonic() + 2 * VISIBLE_WITHIN + 1.0
        expected = totals(default=(2, 3980), fallback=(1, 5))
        while True:
            try:
                if await ledger.summary(None, None) == expected:
                    break
            except LedgerUnavailable:
                pass
            assert time.monotonic() < deadline, await ledger.summary(None, None)
            await asyncio.sleep(0.02)
        await ledger.close()

    run(case())


# End to end: the service recording in MongoDB


def test_the_service_records_in_mongodb_what_the_processors_stored(
    mongo_url: str,
    service_factory: Callable[..., Service],
    fresh_processors: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = with_database(mongo_url, f"service_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("RINHA_LEDGER", url)
    service = service_factory()
    paid = [new_id() for _ in range(20)]
    for correlation_id in paid:
        assert service.pay(correlation_id, 20.05).status == 202
    service.wait_settled()
    expected = {
        "default": fresh_processors.default.summary(),
        "fallback": fresh_processors.fallback.summary(),
    }
    assert expected["default"]["totalRequests"] + expected["fallback"]["totalRequests"] == 20
    deadline = time.monotonic() + VISIBLE_WITHIN
    while True:
        ours = service.summary()
        if all(
            ours[name]["totalRequests"] == expected[name]["totalRequests"]
            and ours[name]["totalAmount"] == expected[name]["totalAmount"]
            for name in expected
        ):
            break
        assert time.monotonic() < deadline, (ours, expected)
        time.sleep(0.02)

    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=2000, tz_aware=True)
    try:
        stored = {doc["_id"]: doc for doc in client.get_default_database()["payments"].find()}
    finally:
        client.close()
    assert sorted(stored) == sorted(paid)
    sample = stored[paid[0]]
    theirs = getattr(fresh_processors, sample["processor"]).admin("GET", f"/payments/{paid[0]}")
    assert theirs.status == 200, theirs
    at_ms = sample["requestedAtMs"]
    assert parse_us(theirs.json()["requestedAt"]) == at_ms * 1000
    assert sample["requestedAt"] == EPOCH + timedelta(milliseconds=at_ms)
    assert sample["cents"] == 2005
