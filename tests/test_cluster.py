"""Replicas of one host without HAProxy, what is particular to this shape: a replica follows its
peers' journals between summaries, reads them whole whatever a crash or a full disk left in
them, and a purge that reaches a replica late forgets only what came before it. What every shape promises is tests/test_cluster_contract.py's."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rinha.clock import now_ms
from rinha.cluster.peers import FOLLOW_INTERVAL, PeerJournal, purge_unowned
from rinha.ledger import Totals
from tests.support.clients import Service
from tests.support.journals import recovered
from tests.support.senders import pay_concurrently
from tests.support.wire import unix_call


def test_a_purge_that_reaches_a_replica_late_forgets_only_what_came_before_it(
    cluster: list[Service], fresh_processors: Any, tmp_path: Path
) -> None:
    # A replica stalled (SIGSTOP) when a purge was asked reads the request when it resumes,
    # after the POSTs that queued meanwhile (issue 22, H3): delivered late here, on purpose.
    first, _, third = cluster
    before = third.pay()
    assert before.status == 202
    asked_at_ms = now_ms()
    time.sleep(0.002)  # the next payment is accepted in a later millisecond
    after_id = str(uuid.uuid4())
    assert third.pay(after_id).status == 202
    third.wait_settled()
    control = str(tmp_path / "replica-3.control")
    late = unix_call(control, "POST", "/control/purge", b'{"upToMs":%d}' % asked_at_ms)
    assert late.status == 200
    expected = {"totalRequests": 1, "totalAmount": 19.9}
    for replica in (third, first):
        summary = replica.summary()
        assert summary["default"] == expected
        assert summary["pending"]["totalRequests"] == 0
    third.kill()
    third.restart()
    assert third.pay(after_id).status == 202  # still known: not charged again
    assert third.wait_settled()["default"] == expected
    assert fresh_processors.default.summary()["totalRequests"] == 2


def bytes_read(replica: Service) -> int:
    """Everything the replica's process has read so far, files and sockets (/proc/PID/io)."""
    io = Path(f"/proc/{replica.process.popen.pid}/io").read_text()
    return int(io.split("rchar:")[1].split()[0])


def test_a_replica_keeps_reading_its_peers_journals_between_summaries(
    cluster: list[Service], fresh_processors: Any, tmp_path: Path
) -> None:
    # Read only when a summary asks, a peer's journal has gained a whole audit interval's
    # lines by then: one burst of CPU, which the contest's caps throttle the replica for.
    first, second, third = cluster
    journals = [tmp_path / f"{name}.journal" for name in ("replica-2", "replica-3")]
    sizes_before = sum(journal.stat().st_size for journal in journals)
    read_before = bytes_read(first)
    urls = [second.url, third.url]
    assert len(asyncio.run(pay_concurrently(urls, 200))) == 200
    for replica in (second, third):
        assert replica.wait_settled()["default"]["totalRequests"] == 200
    grown = sum(journal.stat().st_size for journal in journals) - sizes_before
    assert grown > 30_000  # far more than it reads otherwise here (~10 KB: health answers)
    deadline = time.monotonic() + 3 * FOLLOW_INTERVAL + 2
    while bytes_read(first) - read_before < grown and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bytes_read(first) - read_before >= grown  # and no summary was asked of it
    assert first.summary()["default"]["totalRequests"] == 200


def read_all(journal: PeerJournal) -> None:
    journal.open_current()
    while journal.read_chunk():
        pass


def test_a_peer_journal_read_mid_line_survives_the_line_being_cut_back(tmp_path: Path) -> None:
    # A full disk: the writer's line is written short, read as it is, then cut back and
    # written whole in its place (rinha/journal.py, Journal._write).
    path = tmp_path / "journal"
    reader = PeerJournal(str(path))
    path.write_bytes(b"A id-1 100 1\nC id-1 default 5")
    read_all(reader)
    os.truncate(path, len(b"A id-1 100 1\n"))
    with open(path, "ab") as journal:
        journal.write(b"C id-1 default 7 100 1\n")
    read_all(reader)
    totals = reader.totals(None, None)
    assert totals["default"] == Totals(1, 100) and totals["pending"] == Totals()
    assert reader.totals(7, 7)["default"] == Totals(1, 100)
    reader.close()


def test_a_purge_for_a_dead_replica_is_not_swallowed_by_its_torn_last_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal"
    path.write_bytes(b"A id-1 100 1\nA id-2 200 1\nC id-1 defau")  # killed mid-write
    purge_unowned(str(path), 5)
    state = recovered(path)
    assert state.pending == {} and state.known_ids == {}


def test_a_purge_for_a_dead_replica_cuts_its_torn_last_line_off(tmp_path: Path) -> None:
    # Kept before the purge's line, a torn prefix could read as a whole line of other words:
    # here an acceptance of 0.19 where 19.90 was being written.
    path = tmp_path / "journal"
    path.write_bytes(b"P 5\nA id-1 19")  # killed mid-write, after an earlier purge
    purge_unowned(str(path), 3)
    assert path.read_bytes() == b"P 5\nP 3\n"
