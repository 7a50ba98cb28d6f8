"""The journal's disk failing. A write cut short (a full disk) is refused whole, never left
torn. Under the dispatcher (rinha/delivery/), a failing journal delays a payment: its delivery
survives, the payment stays pending, and once the disk is back it is recorded exactly once on
the processor that stored it.

The dispatcher runs in this process so that the fault can be a real one: the journal's file
descriptor is pointed at a read-only file with dup2, and every write on it then fails with
EBADF, as a vanished disk would; pointing it back ends the fault. The processors are the real
emulators.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rinha.config import DispatchSettings
from rinha.delivery import Dispatcher
from rinha.journal import Journal
from rinha.ledger.embedded import EmbeddedLedger
from rinha.payments import Payment
from rinha.processor_client import ProcessorClient
from tests.support.journals import recovered

SETTINGS = DispatchSettings(
    buffer_capacity=10,
    max_send_rate=1000.0,
    settle_after=1.0,
    max_hold=0.0,  # a payment the default seems to refuse would go to the fallback at once
    spill_after=1.0,
    stamp_ahead_ms=0,
)


def descriptor_of(path: Path) -> int:
    """This process's open descriptor on `path`, found as the kernel lists it."""
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(entry) == str(path):
                return int(entry.name)
        except OSError:
            continue
    raise LookupError(path)


async def deliver_through_a_failing_journal(processors: Any, path: Path) -> dict[str, Any]:
    journal = Journal(str(path), fsync=False)
    journal.open()
    ledger = EmbeddedLedger()
    clients = {
        name: ProcessorClient(name, getattr(processors, name).url, timeout=5)
        for name in ("default", "fallback")
    }
    dispatcher = Dispatcher(ledger, clients, journal, SETTINGS, capacity=SETTINGS.buffer_capacity)
    dispatcher.allow(math.inf, 10)
    dispatcher.start()
    journal_fd = descriptor_of(path)
    saved_fd = os.dup(journal_fd)
    read_only = os.open(path, os.O_RDONLY)
    try:
        payment = Payment("4a7e3c1e-0d4b-4a8e-9f59-1f8f3c2b6a10", 1990, 0)
        journal.accepted(payment)
        assert dispatcher.submit(payment)
        # The attempt is under way (the processor holds it 300 ms) when the disk goes: the
        # processor stores the payment, and the confirmation cannot be journaled.
        await asyncio.sleep(0.1)
        os.dup2(read_only, journal_fd)
        await asyncio.sleep(0.5)
        # Meanwhile the default fails: sent again, the payment would land on the fallback.
        processors.default.set_failure(True)
        await asyncio.sleep(1.5)
        pending_during_fault = dispatcher.pending_count
        os.dup2(saved_fd, journal_fd)
        await dispatcher.drain(10)
        return {
            "pending during the fault": pending_during_fault,
            "pending after": dispatcher.pending_count,
            "ledger": await ledger.summary(None, None),
        }
    finally:
        await dispatcher.stop()
        for client in clients.values():
            await client.close()
        journal.close()
        os.close(saved_fd)
        os.close(read_only)


def test_a_failing_journal_delays_a_payment_and_never_charges_it_twice(
    fresh_processors: Any, tmp_path: Path
) -> None:
    fresh_processors.default.set_delay(300)
    path = tmp_path / "journal"
    outcome = asyncio.run(deliver_through_a_failing_journal(fresh_processors, path))
    assert outcome["pending during the fault"] == 1
    assert outcome["pending after"] == 0
    assert fresh_processors.default.summary()["totalRequests"] == 1
    assert fresh_processors.fallback.summary()["totalRequests"] == 0
    ledger = outcome["ledger"]
    assert (ledger["default"].count, ledger["fallback"].count) == (1, 0)
    # The confirmation reached the journal once the disk was back: a restart keeps it.
    assert "C 4a7e3c1e-0d4b-4a8e-9f59-1f8f3c2b6a10 default" in path.read_text()


FULL_DISK = """
import json, resource, sys, uuid
from rinha.journal import Journal
from rinha.payments import Payment

journal = Journal(sys.argv[1], fsync=False)
journal.open()
# The file may grow to this many bytes: the write that crosses it is cut short (and Python
# ignores the SIGXFSZ that comes with it).
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
kept = []
for _ in range(50):
    payment = Payment(str(uuid.uuid4()), 1990, 0)
    try:
        journal.accepted(payment)
    except OSError:
        continue
    kept.append(payment.correlation_id)
print(json.dumps(kept))
"""


def test_a_full_disk_refuses_the_line_instead_of_tearing_it(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    # Each acceptance is one 46-byte line: the tenth is cut short at 438 bytes.
    limit = 9 * 46 + 24
    finished = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path), str(limit)],
        capture_output=True,
        text=True,
        check=True,
    )
    kept = json.loads(finished.stdout)
    assert len(kept) == 9
    assert path.read_bytes().endswith(b"\n") and path.stat().st_size == 9 * 46
    assert set(recovered(path).pending) == set(kept)
