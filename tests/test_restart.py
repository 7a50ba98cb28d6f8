"""A replica restarted on a long journal answers at once (issue 22, S4): it reads what its
earlier runs left back while it answers, so the time it is away does not grow with its
journal. What it answers meanwhile keeps every promise: a payment accepted is charged once, a
client's retry of one the journal holds included; a summary is exact or a 503; a purge
forgets the journal's payments too. Started again, it reads the journal it compacted to the
same."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rinha.clock import now_ms
from tests.service_fixtures import processor_env
from tests.support.clients import HEALTH_INTERVAL, Service
from tests.support.processes import Process, free_port, wait_for

# Confirmed payments in the journal: enough that reading it back takes a while.
CONFIRMED = 500_000
CENTS = 1990
# The journal's payments, and the two new ones each test sends, once settled.
EXPECTED = (CONFIRMED + 2, (CONFIRMED + 2) * CENTS)


@dataclass
class LongJournal:
    """A journal an earlier run left an hour ago, CONFIRMED payments on the default and one
    accepted and never sent (`pending`), and the replica a test starts on it."""

    path: Path
    log: Path  # the replica's, across its restarts
    processors: Any
    pending: str = field(default_factory=lambda: str(uuid.uuid4()))
    confirmed: list[str] = field(default_factory=list, repr=False)
    replica: Service | None = None

    def write(self) -> None:
        accepted_ms = now_ms() - 3_600_000
        self.confirmed = [f"00000000-0000-4000-8000-{n:012x}" for n in range(CONFIRMED)]
        with self.path.open("w") as journal:
            journal.writelines(
                f"C {i} default {accepted_ms + 5} {CENTS} {accepted_ms}\n" for i in self.confirmed
            )
            journal.write(f"A {self.pending} {CENTS} {accepted_ms}\n")

    def start(self) -> Service:
        """`python -m rinha serve` on the journal, once it answers `/ready`."""
        port = free_port()
        args = ["-m", "rinha", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--journal", str(self.path), "--health-interval", HEALTH_INTERVAL]
        process = Process(args, port, processor_env(self.processors), log=self.log)
        self.replica = Service(process.start("/ready"), self.path)
        return self.replica

    def read_back(self) -> bool:
        """The replica has said it took up what its journal holds."""
        return "recovered " in self.log.read_text()


@pytest.fixture
def long_journal(fresh_processors: Any, tmp_path: Path) -> Iterator[LongJournal]:
    journal = LongJournal(tmp_path / "journal", tmp_path / "log", fresh_processors)
    journal.write()
    yield journal
    if journal.replica is not None:
        journal.replica.process.stop()


def totals(summary: dict[str, Any], name: str) -> tuple[int, int]:
    return summary[name]["totalRequests"], round(summary[name]["totalAmount"] * 100)


def answered(service: Service) -> dict[str, Any]:
    """The first summary answered 200: asked again after each 503, which a replica answers
    when its journal takes longer than a second more to read back."""
    while (reply := service.call("GET", "/payments-summary")).status != 200:
        assert reply.status == 503, reply
    return dict(reply.json())


def settled(service: Service) -> dict[str, Any]:
    """The summary once it is answered (not 503) with nothing pending."""
    answers: list[dict[str, Any]] = []

    def nothing_pending() -> bool:
        reply = service.call("GET", "/payments-summary")
        answers.append(reply.json())
        return reply.status == 200 and answers[-1]["pending"]["totalRequests"] == 0

    wait_for(nothing_pending, "a summary with nothing pending")
    return answers[-1]


def pay_while_read_back(journal: LongJournal, replica: Service) -> str:
    """A new payment, and clients' retries of two the journal holds, the pending one and a
    confirmed one, all answered 202 before the replica has read its journal back; returns
    the new payment's id."""
    fresh = str(uuid.uuid4())
    for correlation_id in (fresh, journal.pending, journal.confirmed[0]):
        assert replica.pay(correlation_id).status == 202
    assert not journal.read_back(), "answered only once the journal was read back"
    return fresh


def test_a_restarted_replica_answers_while_it_reads_its_journal_back(
    long_journal: LongJournal, fresh_processors: Any
) -> None:
    # Nothing is confirmed within two seconds of being sent: a summary answered when the
    # journal is taken up sees every new payment pending.
    fresh_processors.default.set_delay(2000)
    replica = long_journal.start()
    fresh = pay_while_read_back(long_journal, replica)
    during = answered(replica)
    assert totals(during, "default") == (CONFIRMED, CONFIRMED * CENTS)
    assert totals(during, "pending") == (2, 2 * CENTS)
    assert totals(settled(replica), "default") == EXPECTED
    assert fresh_processors.stored() == (2, 0)
    assert fresh_processors.default.has(long_journal.pending)
    assert fresh_processors.default.has(fresh)

    replica.kill()
    replica = long_journal.start()  # on the journal it compacted
    assert replica.pay(long_journal.pending).status == 202
    assert replica.pay(long_journal.confirmed[1]).status == 202
    assert totals(settled(replica), "default") == EXPECTED
    assert fresh_processors.stored() == (2, 0)


def test_killed_while_it_reads_its_journal_back_it_loses_nothing(
    long_journal: LongJournal, fresh_processors: Any
) -> None:
    replica = long_journal.start()
    fresh = pay_while_read_back(long_journal, replica)
    replica.kill()
    replica = long_journal.start()
    assert totals(settled(replica), "default") == EXPECTED
    assert fresh_processors.stored() == (2, 0)
    assert fresh_processors.default.has(long_journal.pending)
    assert fresh_processors.default.has(fresh)


def test_a_purge_while_the_journal_is_read_back_forgets_what_it_holds(
    long_journal: LongJournal, fresh_processors: Any
) -> None:
    replica = long_journal.start()
    assert replica.call("POST", "/purge-payments").status == 200
    fresh = str(uuid.uuid4())
    assert replica.pay(fresh).status == 202
    assert not long_journal.read_back(), "answered only once the journal was read back"
    assert totals(settled(replica), "default") == (1, CENTS)
    assert fresh_processors.stored() == (1, 0)
    assert fresh_processors.default.has(fresh)

    replica.kill()
    replica = long_journal.start()
    assert totals(settled(replica), "default") == (1, CENTS)
    assert fresh_processors.stored() == (1, 0)
