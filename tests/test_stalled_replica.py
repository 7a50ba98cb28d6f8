"""A replica that stalls (SIGSTOP: a GC pause, a frozen VM, a container starved by its CPU
quota look the same) must not hold up the requests HAProxy sends it (issue 22, H6): its socket
still accepts connections, so a check that only connects keeps it in rotation, and the
contest's client gives up on a request after 1.5 s.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.audit import iso
from tests.support.clients import Service, StackUnderTest
from tests.support.processes import call

CLIENT_TIMEOUT = 1.5  # the official test's


def replica_status(stack: StackUnderTest) -> dict[str, str]:
    """HAProxy's status of each replica (UP, DOWN, …), from its stats CSV."""
    csv = call(stack.stats_port, "GET", "/;csv").body.decode()
    header = csv.splitlines()[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in csv.splitlines()[1:] if line]
    return {r["svname"]: r["status"] for r in rows if r["svname"].startswith("replica")}


def test_a_stalled_replica_leaves_the_rotation_and_comes_back(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    pid = stack.replica_pid("replica-2")
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while replica_status(stack)["replica-2"] != "DOWN":
            assert time.monotonic() < deadline, replica_status(stack)
            time.sleep(0.1)
        for _ in range(20):
            summary = call(stack.port, "GET", "/payments-summary", timeout=CLIENT_TIMEOUT)
            assert summary.status == 200
            body = {"correlationId": str(uuid.uuid4()), "amount": 19.90}
            paid = call(stack.port, "POST", "/payments", body, timeout=CLIENT_TIMEOUT)
            assert paid.status == 202
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while replica_status(stack)["replica-2"] != "UP":
        assert time.monotonic() < deadline, replica_status(stack)
        time.sleep(0.1)
    final = stack.wait_settled()
    assert final["default"]["totalRequests"] == 20
    assert fresh_processors.default.summary()["totalRequests"] == 20


def attempts_journaled(journal: Path) -> int:
    return sum(line.startswith("S ") for line in journal.read_text().splitlines())


def test_a_stalled_replicas_payments_count_once_the_processor_has_them(
    cluster: list[Service], fresh_processors: Any, tmp_path: Path
) -> None:
    # (issue 22, H4) A replica stopped with attempts under way: the processor stores them
    # after its delay, and the replica's journal says only that they were sent. The audit
    # reads windows ending 2 s before now, and the replica may stay stopped far longer.
    first, _, third = cluster
    start = iso(datetime.now(UTC) - timedelta(seconds=1))
    fresh_processors.default.set_delay(300)
    for _ in range(10):
        assert third.pay().status == 202
    journal = tmp_path / "replica-3.journal"
    # Journaled, then sent: stopped in between, an attempt never reaches the processor.
    deadline = time.monotonic() + 5
    while attempts_journaled(journal) < 10 or fresh_processors.default.in_flight() < 10:
        assert time.monotonic() < deadline, journal.read_text()
        time.sleep(0.01)
    assert third.process.popen is not None
    pid = third.process.popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while True:
            end = iso(datetime.now(UTC) - timedelta(seconds=2))
            ours = first.summary(start, end)["default"]
            theirs = fresh_processors.default.summary(start, end)
            if theirs["totalRequests"] == 10 and ours["totalRequests"] == 10:
                assert ours["totalAmount"] == theirs["totalAmount"]
                break
            assert time.monotonic() < deadline, (ours, theirs)
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert third.wait_settled()["default"]["totalRequests"] == 10
