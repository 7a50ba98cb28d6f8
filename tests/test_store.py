"""Replicas that share nothing but the store (rinha/store.py), what is particular to this shape:
three replicas, each on an address of its own with a journal in a directory of its own, no peer
named, behind HAProxy over TCP, against the SecantusDB stand-in for MongoDB
(tests/support/clusters.py): the same ids sent to two replicas are charged once, a replica
killed for good with its disk gone loses nothing and hands the poller on, one started again on
its journal takes up its own payments, and the replicas ride out the store going away. What
every shape promises is tests/test_cluster_contract.py's."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.service_fixtures import processor_env
from tests.support.audit import AUDIT_LAG, assert_exact, assert_processed_once, iso
from tests.support.clients import Client, Service
from tests.support.clusters import (
    StandIn,
    balancer,
    run_name,
    start_store_cluster,
    stop_all,
    with_database,
)
from tests.support.processes import wait_for
from tests.support.senders import Burst, burst, pay_concurrently

LEASE_SECONDS = 3  # rinha/store.py
CLAIMS_PER_WRITE = 1000  # BATCH_LIMIT, rinha/cluster/store/batches.py
# Short, so that a dead replica's payments are taken up within seconds: no attempt in these
# tests outlives the 1 s timeout (the emulators' delays stay at 100 ms at most).
OPTIONS = ["--max-hold", "0.3", "--processor-timeout", "1", "--settle-after", "3"]


@dataclass
class StoreCluster:
    replicas: list[Service]
    front: Client  # HAProxy
    database: Any

    def poller(self) -> str | None:
        doc = self.database["cluster"].find_one({"_id": "poller"})
        return None if doc is None else doc.get("holder")

    def burst(self, processors: Any, payments: int, meanwhile: Any = None) -> Burst:
        """A burst (tests/support/senders.py) in which each payment is sent through HAProxy
        and straight to a replica, so that two replicas receive most ids; every replica
        audited."""
        urls = [replica.url for replica in self.replicas]
        return asyncio.run(
            burst(
                processors,
                lambda index: [self.front.url, urls[index % len(urls)]],
                urls,
                payments,
                senders=10,
                meanwhile=meanwhile,
            )
        )


@pytest.fixture
def store_cluster(mongo_url: str, fresh_processors: Any, tmp_path: Path) -> Iterator[StoreCluster]:
    url = with_database(mongo_url, f"store_{uuid.uuid4().hex[:12]}")
    with running_cluster(url, fresh_processors, tmp_path) as cluster:
        yield cluster


@contextmanager
def running_cluster(
    url: str, processors: Any, tmp_path: Path, clock_ahead: dict[int, float] | None = None
) -> Iterator[StoreCluster]:
    """Three replicas and HAProxy; `clock_ahead` sets replica N's wall clock that many
    seconds ahead, under libfaketime."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    if clock_ahead and shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (apt-get install faketime)")
    env = processor_env(processors)
    replicas = start_store_cluster(url, tmp_path, env, *OPTIONS, clock_ahead=clock_ahead)
    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=2000)
    try:
        with balancer(replicas) as front:
            yield StoreCluster(replicas, front, client.get_default_database())
    finally:
        stop_all(replicas)
        client.close()


def test_replicas_that_share_only_the_store_charge_each_payment_once(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    found = store_cluster.burst(fresh_processors, 300)
    assert len(found.accepted) == 300
    assert found.differences == []
    theirs = assert_exact(store_cluster.replicas, fresh_processors)
    assert theirs["default"]["totalRequests"] and theirs["fallback"]["totalRequests"]
    assert_processed_once(found.accepted, fresh_processors)


def test_a_replica_killed_for_good_loses_nothing_and_the_poller_moves(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    names = {run_name(replica): replica for replica in store_cluster.replicas}
    polling = store_cluster.poller()
    assert polling in names
    dead = names[polling]
    survivors = [replica for replica in store_cluster.replicas if replica is not dead]

    async def kill_mid_burst(pause: asyncio.Event) -> None:
        await asyncio.sleep(0.6)
        # A host that dies for good loses the 202s of its last claim interval (20 ms, README):
        # the senders pause for ten times that, so that no 202 falls in it. Both processors
        # fail meanwhile, so that it dies holding payments, and with more on their way.
        pause.set()
        fresh_processors.default.set_delay(100)
        for processor in (fresh_processors.default, fresh_processors.fallback):
            processor.set_failure(True)
        await asyncio.sleep(0.2)
        fresh_processors.default.set_failure(False)
        await asyncio.sleep(0.05)  # its probe of the default, at least, is under way
        dead.kill()
        assert dead.journal is not None
        shutil.rmtree(dead.journal.parent)  # the host is gone, its disk too
        fresh_processors.fallback.set_failure(False)
        fresh_processors.default.set_delay(0)
        pause.clear()

    found = store_cluster.burst(fresh_processors, 600, kill_mid_burst)
    # Another replica holds the poller's lease and polls within a few seconds of the death.
    wait_for(lambda: store_cluster.poller() not in (polling, None), "a new poller", timeout=10)
    assert store_cluster.poller() in {run_name(replica) for replica in survivors}
    calls = fresh_processors.default.health_calls()["answered"]
    wait_for(
        lambda: fresh_processors.default.health_calls()["answered"] > calls,
        "the new poller polling",
        timeout=5,
    )
    assert_exact(survivors, fresh_processors)
    assert_processed_once(found.accepted, fresh_processors)


def test_a_replica_killed_and_started_again_on_its_journal_takes_up_its_own_payments(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    """Killed without a pause: its last 202s may not be claimed in the store yet, but they
    are in its journal, as are the attempts it had under way."""
    victim = store_cluster.replicas[1]

    async def kill_and_restart(pause: asyncio.Event) -> None:
        await asyncio.sleep(0.6)
        fresh_processors.default.set_delay(100)
        victim.kill()
        await asyncio.to_thread(victim.restart)
        fresh_processors.default.set_delay(0)

    found = store_cluster.burst(fresh_processors, 600, kill_and_restart)
    assert_exact(store_cluster.replicas, fresh_processors)
    assert_processed_once(found.accepted, fresh_processors)


def test_replicas_ride_out_the_store_going_away(
    stoppable_stand_in: StandIn, fresh_processors: Any, tmp_path: Path
) -> None:
    """With the store gone, POSTs are still answered and kept while the leases last, and
    refused once they have lapsed (issue 22, H7: a replica whose lease lapsed may be taken
    over and exit); no replica sends what another may take over, and none takes the others
    over when it comes back: every payment is processed once when the store returns."""
    url = with_database(stoppable_stand_in.url, "outage")
    with running_cluster(url, fresh_processors, tmp_path) as cluster:

        def pay(count: int) -> set[str]:
            ids = {str(uuid.uuid4()) for _ in range(count)}
            for correlation_id in ids:
                assert cluster.front.pay(correlation_id).status == 202
            return ids

        before = pay(60)
        stoppable_stand_in.stop()
        during = pay(20)
        time.sleep(LEASE_SECONDS + 1)  # every lease lapses
        for replica in cluster.replicas:
            assert replica.pay().status == 503
        stoppable_stand_in.start()
        probes = set()
        for replica in cluster.replicas:
            deadline = time.monotonic() + 10
            while True:
                probe = str(uuid.uuid4())
                if replica.pay(probe).status != 503:
                    break
                assert time.monotonic() < deadline, "its lease was not renewed"
                time.sleep(0.1)
            probes.add(probe)
        after = pay(60) | probes
        assert_exact(cluster.replicas, fresh_processors)
        assert_processed_once(before | during | after, fresh_processors)
        for replica in cluster.replicas:
            assert replica.alive, "a replica exited"


def test_a_replica_taken_over_hands_over_what_it_answered_202_for(
    stoppable_stand_in: StandIn, fresh_processors: Any, tmp_path: Path
) -> None:
    """(issue 22, H7) Payments answered 202 while the store was out of reach have no claims
    yet: they are in the journal only. Stalled until the others, back with the store, find its
    lease expired and take it over, a replica exits when it sees its lease dead: it stores
    those claims first, so that the others take them over too. More of them than one write
    of claims holds: resumed, the replica's renewal finds its lease dead well before a second
    write could store the rest."""
    url = with_database(stoppable_stand_in.url, "taken_over")
    with running_cluster(url, fresh_processors, tmp_path) as cluster:
        victim = cluster.replicas[2]
        assert victim.process.popen is not None
        stoppable_stand_in.stop()
        ids = set(asyncio.run(pay_concurrently(victim.url, CLAIMS_PER_WRITE + 500)))
        # Answered 202 until its lease lapsed (3 s), 503 after.
        assert len(ids) > CLAIMS_PER_WRITE, len(ids)
        victim.process.popen.send_signal(signal.SIGSTOP)
        stoppable_stand_in.start()
        name = run_name(victim)
        wait_for(
            lambda: (cluster.database["cluster"].find_one({"_id": name}) or {}).get("dead"),
            "the victim's lease taken over",
            timeout=30,
        )
        victim.process.popen.send_signal(signal.SIGCONT)
        assert victim.process.popen.wait(30) == 3  # it saw its lease dead
        assert_exact(cluster.replicas[:2], fresh_processors)
        assert_processed_once(ids, fresh_processors)


def test_a_replica_whose_clock_is_ahead_marks_no_live_replica_dead(
    mongo_url: str, fresh_processors: Any, tmp_path: Path
) -> None:
    """(issue 22, H11) Leases are set and compared by the store's clock: a host whose clock is
    ahead by more than a lease saw every other lease expired at each renewal."""
    url = with_database(mongo_url, f"clock_{uuid.uuid4().hex[:12]}")
    with running_cluster(url, fresh_processors, tmp_path, clock_ahead={3: 4.0}) as cluster:
        time.sleep(LEASE_SECONDS + 1)  # renewals enough to have marked the others dead
        leases = list(cluster.database["cluster"].find({"_id": {"$regex": "^replica:"}}))
        assert len(leases) == 3 and not any(lease.get("dead") for lease in leases), leases
        for replica in cluster.replicas:
            assert replica.alive, "a replica exited"


def test_a_purge_through_a_replica_whose_clock_is_ahead_forgets_nothing_newer(
    mongo_url: str, fresh_processors: Any, tmp_path: Path
) -> None:
    """(issue 22, H10) A purge's moment and the acceptances it is compared with are in the
    store's clock: through a replica 2 s ahead, a purge forgot the payments that another
    accepted right after it."""
    url = with_database(mongo_url, f"clock_{uuid.uuid4().hex[:12]}")
    with running_cluster(url, fresh_processors, tmp_path, clock_ahead={1: 2.0}) as cluster:
        ahead, behind = cluster.replicas[0], cluster.replicas[1]
        ahead.purge()
        ids = {str(uuid.uuid4()) for _ in range(5)}
        for correlation_id in ids:
            assert behind.pay(correlation_id).status == 202
        theirs = assert_exact(cluster.replicas, fresh_processors)
        assert theirs["default"]["totalRequests"] == 5
        assert_processed_once(ids, fresh_processors)


def test_every_audit_is_exact_while_a_replica_stalls(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    """(issue 22, H4) The processors store what a replica had in flight when it stalled; its
    lease outlives the audit's 2 s lag, so the others count what the processors stored of its
    payments before they take it over. (A replica that dies: tests/test_cluster_contract.py.)"""
    victim = store_cluster.replicas[2]
    survivor = store_cluster.replicas[0]
    assert victim.process.popen is not None
    start = datetime.now(UTC) - timedelta(seconds=1)
    fresh_processors.default.set_delay(300)
    for _ in range(20):
        assert victim.pay().status == 202
    time.sleep(0.15)  # claimed and on their way
    victim.process.popen.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            window = {"from": iso(start), "to": iso(datetime.now(UTC) - AUDIT_LAG)}
            ours = survivor.summary(window["from"], window["to"])
            theirs = fresh_processors.default.summary(window["from"], window["to"])
            assert ours["default"]["totalRequests"] == theirs["totalRequests"], (ours, theirs)
            time.sleep(0.2)
    finally:
        victim.process.popen.send_signal(signal.SIGCONT)
        victim.process.popen.kill()
    assert_exact(store_cluster.replicas[:2], fresh_processors)
