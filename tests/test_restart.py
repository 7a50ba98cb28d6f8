"""A replica restarted on a long journal answers at once (issue 22, S4): it reads what its
earlier runs left back while it answers, so the time it is away does not grow with its
journal. What it answers meanwhile keeps every promise: a payment accepted is charged once, a
client's retry of one the journal holds included; a summary is exact or a 503; a purge
forgets the journal's payments too. Started again, it reads the journal it compacted to the
same."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from rinha.clock import now_ms
from tests.service_fixtures import processor_env
from tests.support.clients import HEALTH_INTERVAL, Service
from tests.support.processes import Process, free_port, wait_for

# Confirmed payments in the journal: enough that reading it back takes a while.
CONFIRMED = 500_000
CENTS = 1990


def write_journal(path: Path, pending: str) -> list[str]:
    """A journal as an earlier run left it, an hour ago: CONFIRMED payments on the default,
    and `pending` accepted, never sent. Returns the confirmed ids."""
    accepted_ms = now_ms() - 3_600_000
    ids = [f"00000000-0000-4000-8000-{n:012x}" for n in range(CONFIRMED)]
    with path.open("w") as journal:
        journal.writelines(f"C {i} default {accepted_ms + 5} {CENTS} {accepted_ms}\n" for i in ids)
        journal.write(f"A {pending} {CENTS} {accepted_ms}\n")
    return ids


def start_on(journal: Path, log: Path, processors: Any) -> Service:
    """`python -m rinha serve` on `journal`, its log in `log`, once it answers `/ready`."""
    port = free_port()
    args = ["-m", "rinha", "serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--journal", str(journal), "--health-interval", HEALTH_INTERVAL]
    process = Process(args, port, processor_env(processors), log=log)
    return Service(process.start("/ready"), journal)


def read_back(log: Path) -> bool:
    """The replica has said it took up what its journal holds."""
    return "recovered " in log.read_text()


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


def test_a_restarted_replica_answers_while_it_reads_its_journal_back(
    fresh_processors: Any, tmp_path: Path
) -> None:
    # Nothing is confirmed within two seconds of being sent: a summary answered when the
    # journal is taken up sees every new payment pending.
    fresh_processors.default.set_delay(2000)
    journal, log = tmp_path / "journal", tmp_path / "log"
    pending = str(uuid.uuid4())
    confirmed = write_journal(journal, pending)
    fresh = str(uuid.uuid4())
    service = start_on(journal, log, fresh_processors)
    try:
        assert service.pay(fresh).status == 202
        # Clients' retries of payments the journal holds: the pending one and a confirmed one.
        assert service.pay(pending).status == 202
        assert service.pay(confirmed[0]).status == 202
        assert not read_back(log), "answered only once the journal was read back"
        during = answered(service)
        assert totals(during, "default") == (CONFIRMED, CONFIRMED * CENTS)
        assert totals(during, "pending") == (2, 2 * CENTS)
        expected = (CONFIRMED + 2, (CONFIRMED + 2) * CENTS)
        assert totals(settled(service), "default") == expected
        assert fresh_processors.stored() == (2, 0)
        assert fresh_processors.default.has(pending) and fresh_processors.default.has(fresh)

        service.kill()
        service = start_on(journal, log, fresh_processors)
        assert service.pay(pending).status == 202
        assert service.pay(confirmed[1]).status == 202
        assert totals(settled(service), "default") == expected
        assert fresh_processors.stored() == (2, 0)
    finally:
        service.process.stop()


def test_a_purge_while_the_journal_is_read_back_forgets_what_it_holds(
    fresh_processors: Any, tmp_path: Path
) -> None:
    journal, log = tmp_path / "journal", tmp_path / "log"
    pending = str(uuid.uuid4())
    write_journal(journal, pending)
    service = start_on(journal, log, fresh_processors)
    try:
        assert service.call("POST", "/purge-payments").status == 200
        fresh = str(uuid.uuid4())
        assert service.pay(fresh).status == 202
        assert not read_back(log), "answered only once the journal was read back"
        assert totals(settled(service), "default") == (1, CENTS)
        assert fresh_processors.stored() == (1, 0)
        assert fresh_processors.default.has(fresh)

        service.kill()
        service = start_on(journal, log, fresh_processors)
        assert totals(settled(service), "default") == (1, CENTS)
        assert fresh_processors.stored() == (1, 0)
    finally:
        service.process.stop()


def test_killed_while_it_reads_its_journal_back_it_loses_nothing(
    fresh_processors: Any, tmp_path: Path
) -> None:
    journal, log = tmp_path / "journal", tmp_path / "log"
    pending = str(uuid.uuid4())
    confirmed = write_journal(journal, pending)
    fresh = str(uuid.uuid4())
    service = start_on(journal, log, fresh_processors)
    try:
        for correlation_id in (fresh, pending, confirmed[0]):
            assert service.pay(correlation_id).status == 202
        assert not read_back(log), "answered only once the journal was read back"
        service.kill()
        service = start_on(journal, log, fresh_processors)
        expected = (CONFIRMED + 2, (CONFIRMED + 2) * CENTS)
        assert totals(settled(service), "default") == expected
        assert fresh_processors.stored() == (2, 0)
        assert fresh_processors.default.has(pending) and fresh_processors.default.has(fresh)
    finally:
        service.process.stop()
