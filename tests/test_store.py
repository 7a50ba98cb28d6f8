"""Replicas that share nothing but the store (rinha/store.py): three replicas, each on an address
of its own (127.0.0.11–13) with a journal in a directory of its own, no peer named, behind
HAProxy over TCP, against the SecantusDB stand-in for MongoDB (tests/test_ledger_contract.py
says how it is found and why it is a stand-in)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pymongo
import pytest

from tests.processes import Process, Reply, call, free_port
from tests.test_audit import ADMIN, AUDIT_LAG, audit_once, iso
from tests.test_ledger_contract import (  # noqa: F401 (fixtures)
    StandIn,
    mongo_url,
    stoppable_stand_in,
    with_database,
)

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "haproxy" / "haproxy.cfg"
HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
TOTALS = ("totalRequests", "totalAmount")
LEASE_SECONDS = 3  # rinha/store.py
# Short, so that a dead replica's payments are taken up within seconds: no attempt in these
# tests outlives the 1 s timeout (the emulators' delays stay at 100 ms at most).
OPTIONS = ["--health-interval", "0.2", "--max-hold", "0.3"]
OPTIONS += ["--processor-timeout", "1", "--settle-after", "3"]


@dataclass
class Replica:
    process: Process
    journal: Path

    @property
    def url(self) -> str:
        return f"http://{self.process.host}:{self.process.port}"

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        """A request straight to this replica, past HAProxy."""
        return call(self.process.port, method, path, body, host=self.process.host)

    def summary(self) -> dict[str, Any]:
        reply = self.call("GET", "/payments-summary")
        assert reply.status == 200, reply
        return reply.json()

    def name(self) -> str:
        """This run's name in the store, from its journal."""
        lines = self.journal.read_text().splitlines()
        return [line.split()[1] for line in lines if line.startswith("I ")][-1]


@dataclass
class StoreCluster:
    replicas: list[Replica]
    haproxy: subprocess.Popen[bytes]
    port: int
    database: Any

    def poller(self) -> str | None:
        doc = self.database["cluster"].find_one({"_id": "poller"})
        return None if doc is None else doc.get("holder")


@pytest.fixture
def store_cluster(
    mongo_url: str,  # noqa: F811 (the fixture imported above)
    fresh_processors: Any,
    tmp_path: Path,
) -> Iterator[StoreCluster]:
    url = with_database(mongo_url, f"store_{uuid.uuid4().hex[:12]}")
    with running_cluster(url, fresh_processors, tmp_path) as cluster:
        yield cluster


@contextmanager
def running_cluster(
    url: str, processors: Any, tmp_path: Path, clock_ahead: dict[int, float] | None = None
) -> Iterator[StoreCluster]:
    """Three replicas and HAProxy; `clock_ahead` sets replica N's wall clock that many
    seconds ahead, under libfaketime."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    env = {
        "RINHA_LEDGER": url,
        "PROCESSOR_DEFAULT_URL": processors.default.url,
        "PROCESSOR_FALLBACK_URL": processors.fallback.url,
    }
    replicas = []
    for index, host in enumerate(HOSTS, 1):
        journal = tmp_path / f"host-{index}" / "journal"
        port = free_port()
        args = ["-m", "rinha", "serve", "--host", host, "--port", str(port)]
        args += ["--journal", str(journal), *OPTIONS]
        process = Process(args, port, env, host=host)
        ahead = (clock_ahead or {}).get(index)
        if ahead is not None:
            faketime = shutil.which("faketime")
            if faketime is None:
                pytest.skip("faketime is not installed (apt-get install faketime)")
            process.program = faketime
            process.args = ["-f", f"+{ahead}s", sys.executable, *args]
            process.env = {**env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        process.start("/payments-summary")
        replicas.append(Replica(process, journal))
    port, stats_port = free_port(), free_port()
    balancer_env = {
        **os.environ,
        "RINHA_BIND": f"127.0.0.1:{port}",
        "RINHA_STATS_BIND": f"127.0.0.1:{stats_port}",
    }
    for index, replica in enumerate(replicas, 1):
        balancer_env[f"RINHA_REPLICA_{index}"] = f"{replica.process.host}:{replica.process.port}"
    balancer = subprocess.Popen([haproxy, "-db", "-f", str(HAPROXY_CONFIG)], env=balancer_env)
    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=2000)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if call(port, "GET", "/payments-summary").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.05)
        yield StoreCluster(replicas, balancer, port, client.get_default_database())
    finally:
        balancer.terminate()
        balancer.wait(10)
        for replica in replicas:
            replica.process.stop()
        client.close()


async def burst(
    cluster: StoreCluster,
    processors: Any,
    payments: int,
    meanwhile: Callable[[asyncio.Event], Awaitable[None]] | None = None,
) -> tuple[set[str], list[str]]:
    """Payments while the default fails part of the time: each one sent through HAProxy and
    straight to a replica, so that two replicas receive most ids; every replica's summary
    audited every 0.3 s against the processors'. `meanwhile` runs alongside, and may pause the
    senders with the event it is given. The ids answered 202 at least once, and the audit's
    differences."""
    start = datetime.now(UTC) - timedelta(seconds=1)
    accepted: set[str] = set()
    differences: list[str] = []
    done = asyncio.Event()
    pause = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def post(base: str, correlation_id: str) -> None:
            body = {"correlationId": correlation_id, "amount": 19.90}
            try:
                async with session.post(f"{base}/payments", json=body) as answer:
                    if answer.status == 202:
                        accepted.add(correlation_id)
            except aiohttp.ClientError:
                pass  # its replica was killed: never answered 2xx

        async def send(offset: int) -> None:
            for index in range(offset, payments, 10):
                while pause.is_set():
                    await asyncio.sleep(0.01)
                correlation_id = str(uuid.uuid4())
                replica = cluster.replicas[index % len(cluster.replicas)]
                await asyncio.gather(
                    post(f"http://127.0.0.1:{cluster.port}", correlation_id),
                    post(replica.url, correlation_id),
                )
                await asyncio.sleep(0.02)

        async def stir() -> None:
            failing = False
            while not done.is_set():
                url = f"{processors.default.url}/admin/configurations/failure"
                if pause.is_set():
                    await asyncio.sleep(0.05)
                    continue
                failing = not failing
                async with session.put(url, json={"failure": failing}, headers=ADMIN):
                    pass
                await asyncio.sleep(0.5)
            async with session.put(url, json={"failure": False}, headers=ADMIN):
                pass

        async def audit() -> None:
            while not done.is_set():
                for replica in cluster.replicas:
                    try:
                        found = await audit_once(session, replica.url, processors, start)
                    except aiohttp.ClientError:
                        continue  # killed
                    differences.extend(f"{replica.url} {line}" for line in found)
                await asyncio.sleep(0.3)

        stirring = asyncio.create_task(stir())
        auditing = asyncio.create_task(audit())
        sending = [send(offset) for offset in range(10)]
        await asyncio.gather(*sending, *([meanwhile(pause)] if meanwhile else []))
        await asyncio.sleep(AUDIT_LAG.total_seconds())
        done.set()
        await asyncio.gather(stirring, auditing)
    return accepted, differences


def settled(replicas: list[Replica], processors: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Every replica's summary once nothing is pending, each equal to the processors'."""
    deadline = time.monotonic() + timeout
    while any(replica.summary()["pending"]["totalRequests"] for replica in replicas):
        assert time.monotonic() < deadline, [replica.summary() for replica in replicas]
        time.sleep(0.1)
    theirs = {
        name: {key: getattr(processors, name).summary()[key] for key in TOTALS}
        for name in ("default", "fallback")
    }
    for replica in replicas:
        ours = replica.summary()
        assert {name: ours[name] for name in theirs} == theirs, replica.url
    return theirs


def assert_processed_once(ids: set[str], processors: Any) -> None:
    """Every id stored by exactly one processor, and nothing else stored."""
    for correlation_id in ids:
        found = [
            name
            for name in ("default", "fallback")
            if getattr(processors, name).admin("GET", f"/payments/{correlation_id}").status == 200
        ]
        assert len(found) == 1, (correlation_id, found)
    theirs = [getattr(processors, name).summary() for name in ("default", "fallback")]
    assert sum(summary["totalRequests"] for summary in theirs) == len(ids)


def test_replicas_that_share_only_the_store_charge_each_payment_once(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    accepted, differences = asyncio.run(burst(store_cluster, fresh_processors, 300))
    assert len(accepted) == 300
    assert differences == []
    theirs = settled(store_cluster.replicas, fresh_processors)
    assert theirs["default"]["totalRequests"] and theirs["fallback"]["totalRequests"]
    assert_processed_once(accepted, fresh_processors)


def test_a_replica_killed_for_good_loses_nothing_and_the_poller_moves(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    names = {replica.name(): replica for replica in store_cluster.replicas}
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
        assert dead.process.popen is not None
        dead.process.popen.send_signal(signal.SIGKILL)
        dead.process.popen.wait()
        shutil.rmtree(dead.journal.parent)  # the host is gone, its disk too
        fresh_processors.fallback.set_failure(False)
        fresh_processors.default.set_delay(0)
        pause.clear()

    accepted, _ = asyncio.run(burst(store_cluster, fresh_processors, 600, kill_mid_burst))
    # Another replica holds the poller's lease and polls within a few seconds of the death.
    deadline = time.monotonic() + 10
    while store_cluster.poller() in (polling, None):
        assert time.monotonic() < deadline, store_cluster.poller()
        time.sleep(0.1)
    assert store_cluster.poller() in {replica.name() for replica in survivors}
    calls = fresh_processors.default.admin("GET", "/admin/health-calls").json()["answered"]
    time.sleep(1.0)
    assert fresh_processors.default.admin("GET", "/admin/health-calls").json()["answered"] > calls
    settled(survivors, fresh_processors)
    assert_processed_once(accepted, fresh_processors)


def test_a_replica_killed_and_started_again_on_its_journal_takes_up_its_own_payments(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    """Killed without a pause: its last 202s may not be claimed in the store yet, but they
    are in its journal, as are the attempts it had under way."""
    victim = store_cluster.replicas[1]

    async def kill_and_restart(pause: asyncio.Event) -> None:
        await asyncio.sleep(0.6)
        fresh_processors.default.set_delay(100)
        victim.process.stop(signal.SIGKILL)
        await asyncio.to_thread(victim.process.start, "/payments-summary")
        fresh_processors.default.set_delay(0)

    accepted, _ = asyncio.run(burst(store_cluster, fresh_processors, 600, kill_and_restart))
    settled(store_cluster.replicas, fresh_processors)
    assert_processed_once(accepted, fresh_processors)


def test_a_purge_on_one_replica_is_obeyed_by_every_replica(
    store_cluster: StoreCluster, fresh_processors: Any
) -> None:
    asked, holder, other = store_cluster.replicas
    for processor in (fresh_processors.default, fresh_processors.fallback):
        processor.set_failure(True)  # the payments wait in their replica
    held = [str(uuid.uuid4()) for _ in range(10)]
    for index, correlation_id in enumerate(held):
        replica = (holder, other)[index % 2]
        body = {"correlationId": correlation_id, "amount": 19.90}
        assert replica.call("POST", "/payments", body).status == 202
    deadline = time.monotonic() + 5
    while asked.summary()["pending"]["totalRequests"] < len(held):
        assert time.monotonic() < deadline, asked.summary()
        time.sleep(0.05)
    assert asked.call("POST", "/purge-payments").status == 200
    for replica in store_cluster.replicas:  # at once, on every replica
        assert replica.summary()["pending"]["totalRequests"] == 0
    time.sleep(1.0)  # every replica has renewed its lease since, and forgotten
    for processor in (fresh_processors.default, fresh_processors.fallback):
        processor.set_failure(False)
    later = str(uuid.uuid4())
    body = {"correlationId": later, "amount": 5.00}
    assert holder.call("POST", "/payments", body).status == 202
    theirs = settled(store_cluster.replicas, fresh_processors)
    assert theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"] == 1
    assert_processed_once({later}, fresh_processors)
    # A purged id is free again: sent anew, it is a new payment.
    body = {"correlationId": held[0], "amount": 19.90}
    assert other.call("POST", "/payments", body).status == 202
    settled(store_cluster.replicas, fresh_processors)
    assert_processed_once({later, held[0]}, fresh_processors)


def test_replicas_ride_out_the_store_going_away(
    stoppable_stand_in: StandIn,  # noqa: F811 (the fixture imported above)
    fresh_processors: Any,
    tmp_path: Path,
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
                body = {"correlationId": correlation_id, "amount": 19.90}
                assert call(cluster.port, "POST", "/payments", body).status == 202
            return ids

        before = pay(60)
        stoppable_stand_in.stop()
        during = pay(20)
        time.sleep(LEASE_SECONDS + 1)  # every lease lapses
        refused = {"correlationId": str(uuid.uuid4()), "amount": 19.90}
        for replica in cluster.replicas:
            assert replica.call("POST", "/payments", refused).status == 503
        stoppable_stand_in.start()
        probes = set()
        for replica in cluster.replicas:
            deadline = time.monotonic() + 10
            while True:
                probe = {"correlationId": str(uuid.uuid4()), "amount": 19.90}
                if replica.call("POST", "/payments", probe).status != 503:
                    break
                assert time.monotonic() < deadline, "its lease was not renewed"
                time.sleep(0.1)
            probes.add(probe["correlationId"])
        after = pay(60) | probes
        settled(cluster.replicas, fresh_processors)
        assert_processed_once(before | during | after, fresh_processors)
        for replica in cluster.replicas:
            assert replica.process.popen is not None
            assert replica.process.popen.poll() is None, "a replica exited"


def test_a_replica_taken_over_hands_over_what_it_answered_202_for(
    stoppable_stand_in: StandIn,  # noqa: F811 (the fixture imported above)
    fresh_processors: Any,
    tmp_path: Path,
) -> None:
    """(issue 22, H7) Payments answered 202 while the store was out of reach have no claims
    yet: they are in the journal only. Stalled until the others, back with the store, find its
    lease expired and take it over, a replica exits when it sees its lease dead: it stores
    those claims first, so that the others take them over too."""
    url = with_database(stoppable_stand_in.url, "taken_over")
    with running_cluster(url, fresh_processors, tmp_path) as cluster:
        victim = cluster.replicas[2]
        assert victim.process.popen is not None
        stoppable_stand_in.stop()
        ids = {str(uuid.uuid4()) for _ in range(20)}
        for correlation_id in ids:
            body = {"correlationId": correlation_id, "amount": 19.90}
            assert victim.call("POST", "/payments", body).status == 202
        victim.process.popen.send_signal(signal.SIGSTOP)
        stoppable_stand_in.start()
        deadline = time.monotonic() + 30
        name = victim.name()
        while not (cluster.database["cluster"].find_one({"_id": name}) or {}).get("dead"):
            assert time.monotonic() < deadline, "the victim's lease was not taken over"
            time.sleep(0.1)
        victim.process.popen.send_signal(signal.SIGCONT)
        assert victim.process.popen.wait(30) == 3  # it saw its lease dead
        settled(cluster.replicas[:2], fresh_processors)
        assert_processed_once(ids, fresh_processors)


def test_a_replica_whose_clock_is_ahead_marks_no_live_replica_dead(
    mongo_url: str,  # noqa: F811 (the fixture imported above)
    fresh_processors: Any,
    tmp_path: Path,
) -> None:
    """(issue 22, H11) Leases are set and compared by the store's clock: a host whose clock is
    ahead by more than a lease saw every other lease expired at each renewal."""
    url = with_database(mongo_url, f"clock_{uuid.uuid4().hex[:12]}")
    with running_cluster(url, fresh_processors, tmp_path, clock_ahead={3: 4.0}) as cluster:
        time.sleep(LEASE_SECONDS + 1)  # renewals enough to have marked the others dead
        leases = list(cluster.database["cluster"].find({"_id": {"$regex": "^replica:"}}))
        assert len(leases) == 3 and not any(lease.get("dead") for lease in leases), leases
        for replica in cluster.replicas:
            assert replica.process.popen is not None
            assert replica.process.popen.poll() is None, "a replica exited"


def test_a_purge_through_a_replica_whose_clock_is_ahead_forgets_nothing_newer(
    mongo_url: str,  # noqa: F811 (the fixture imported above)
    fresh_processors: Any,
    tmp_path: Path,
) -> None:
    """(issue 22, H10) A purge's moment and the acceptances it is compared with are in the
    store's clock: through a replica 2 s ahead, a purge forgot the payments that another
    accepted right after it."""
    url = with_database(mongo_url, f"clock_{uuid.uuid4().hex[:12]}")
    with running_cluster(url, fresh_processors, tmp_path, clock_ahead={1: 2.0}) as cluster:
        ahead, behind = cluster.replicas[0], cluster.replicas[1]
        assert ahead.call("POST", "/purge-payments").status == 200
        ids = {str(uuid.uuid4()) for _ in range(5)}
        for correlation_id in ids:
            body = {"correlationId": correlation_id, "amount": 19.90}
            assert behind.call("POST", "/payments", body).status == 202
        theirs = settled(cluster.replicas, fresh_processors)
        assert theirs["default"]["totalRequests"] == 5
        assert_processed_once(ids, fresh_processors)


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP])
def test_every_audit_is_exact_while_a_replica_dies_or_stalls(
    store_cluster: StoreCluster, fresh_processors: Any, fault: signal.Signals
) -> None:
    """(issue 22, H4 and H5) The processors store what a replica had in flight when it died
    or stalled; its lease outlives the audit's 2 s lag, so the others count what the
    processors stored of its payments before they take it over."""
    victim = store_cluster.replicas[2]
    survivor = store_cluster.replicas[0]
    assert victim.process.popen is not None
    start = datetime.now(UTC) - timedelta(seconds=1)
    fresh_processors.default.set_delay(300)
    for _ in range(20):
        body = {"correlationId": str(uuid.uuid4()), "amount": 19.90}
        assert victim.call("POST", "/payments", body).status == 202
    time.sleep(0.15)  # claimed and on their way
    victim.process.popen.send_signal(fault)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            window = {"from": iso(start), "to": iso(datetime.now(UTC) - AUDIT_LAG)}
            ours = survivor.call("GET", "/payments-summary?" + urlencode(window)).json()
            theirs = fresh_processors.default.summary(window["from"], window["to"])
            assert ours["default"]["totalRequests"] == theirs["totalRequests"], (ours, theirs)
            time.sleep(0.2)
    finally:
        victim.process.popen.send_signal(signal.SIGCONT)
        victim.process.popen.kill()
    settled(store_cluster.replicas[:2], fresh_processors)
