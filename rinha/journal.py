"""An append-only journal: what a replica accepted, attempted and confirmed survives its crash.

Every fact is one line written with a single `write()` on an `O_APPEND` descriptor before the
fact is acted on: the 202 leaves after its `A` line, a processor call after its `S` line. A
write() is in the kernel once it returns, so a killed process loses nothing; `fsync` (a
setting) also covers the machine losing power, at the price of a disk flush per acceptance.

    A <id> <cents> <accepted_ms>      accepted (answered 202)
    S <id> <processor> <requested_ms> sent: an attempt is under way with this requestedAt
    R <id>                            the last attempt is known not stored (refused, released)
    C <id> <processor> <requested_ms> <cents> <accepted_ms>   confirmed and recorded
    P <at_ms>                         purged: what was accepted up to at_ms is forgotten (a
                                      bare P, written before purges carried their moment:
                                      everything accepted before it)
    I <incarnation>                   the run that wrote the lines after it (shared store)

Recovery replays the lines: confirmed payments rebuild the ledger, accepted ones without a
confirmation are pending again, and one whose last attempt is neither confirmed nor refused is
settled on that processor with the same requestedAt before it may go anywhere else (it may
have been stored). A torn last line is ignored: its fact was never acted on. Start-up rewrites
the journal compacted to what recovery needs.

A running replica holds its journal's lock file (`lock`), so that no second process writes
it; on one host, the other replicas read it too (rinha/cluster/peers.py).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from rinha.ledger import PROCESSORS
from rinha.payments import Payment

# The moment of a bare `P` line: everything accepted before it.
EVERYTHING = math.inf


@dataclass(frozen=True, slots=True)
class Confirmed:
    correlation_id: str
    processor: str
    requested_at_ms: int
    cents: int
    accepted_ms: int


class JournalInUse(Exception):
    """Another live process owns this journal."""


class Replay:
    """Takes a journal's lines in order; each subclass says what a fact means to it."""

    def apply(self, words: list[str]) -> None:
        kind = words[0]
        # A journal written before lines carried accepted_ms: accepted before any purge.
        if kind == "A" and len(words) in (3, 4):
            self.accepted(words[1], int(words[2]), int(words[3]) if len(words) == 4 else 0)
        elif kind == "S" and len(words) == 4 and words[2] in PROCESSORS:
            self.sent(words[1], words[2], int(words[3]))
        elif kind == "R" and len(words) == 2:
            self.not_stored(words[1])
        elif kind == "C" and len(words) in (5, 6) and words[2] in PROCESSORS:
            at, cents = int(words[3]), int(words[4])
            accepted = int(words[5]) if len(words) == 6 else 0
            self.confirmed(Confirmed(words[1], words[2], at, cents, accepted))
        elif kind == "P" and len(words) in (1, 2):
            self.purged(int(words[1]) if len(words) == 2 else EVERYTHING)
        elif kind == "I" and len(words) == 2:
            self.incarnation(words[1])
        else:
            raise ValueError("not a journal line")

    def apply_lines(self, lines: Iterable[str]) -> None:
        """Whole lines only; one that cannot be read is skipped."""
        for line in lines:
            try:
                self.apply(line.split())
            except (ValueError, IndexError):
                continue

    def accepted(self, correlation_id: str, cents: int, accepted_ms: int) -> None:
        pass

    def sent(self, correlation_id: str, processor: str, requested_at_ms: int) -> None:
        pass

    def not_stored(self, correlation_id: str) -> None:
        pass

    def confirmed(self, entry: Confirmed) -> None:
        pass

    def purged(self, up_to_ms: float) -> None:
        pass

    def incarnation(self, name: str) -> None:
        pass


class Recovered(Replay):
    """What a replica takes up again at start: its ledger, its pending payments (each with
    its unsettled attempt, if any), every id it ever accepted and, with a shared store, the
    run whose claims in the store those payments are."""

    def __init__(self) -> None:
        self.confirmed_entries: list[Confirmed] = []
        self.pending: dict[str, Payment] = {}
        self.known_ids: dict[str, int] = {}  # when each was accepted
        self.last_incarnation: str | None = None
        self._attempts: dict[str, tuple[str, int]] = {}

    def accepted(self, correlation_id: str, cents: int, accepted_ms: int) -> None:
        self.known_ids.setdefault(correlation_id, accepted_ms)
        self.pending.setdefault(correlation_id, Payment(correlation_id, cents, accepted_ms))

    def sent(self, correlation_id: str, processor: str, requested_at_ms: int) -> None:
        self._attempts[correlation_id] = (processor, requested_at_ms)

    def not_stored(self, correlation_id: str) -> None:
        self._attempts.pop(correlation_id, None)

    def confirmed(self, entry: Confirmed) -> None:
        # A compacted journal keeps only this line for a confirmed payment: it is known too.
        self.known_ids.setdefault(entry.correlation_id, entry.accepted_ms)
        self.pending.pop(entry.correlation_id, None)
        self._attempts.pop(entry.correlation_id, None)
        self.confirmed_entries.append(entry)

    def purged(self, up_to_ms: float) -> None:
        # A purge forgets what was accepted up to its moment, pending and in flight included.
        self.confirmed_entries = [c for c in self.confirmed_entries if c.accepted_ms > up_to_ms]
        self.pending = {i: p for i, p in self.pending.items() if p.accepted_ms > up_to_ms}
        self.known_ids = {i: at for i, at in self.known_ids.items() if at > up_to_ms}
        self._attempts = {i: a for i, a in self._attempts.items() if i in self.pending}

    def incarnation(self, name: str) -> None:
        self.last_incarnation = name

    def settle_unsettled(self) -> None:
        """Mark each pending payment whose last attempt is unresolved to be settled there."""
        for correlation_id, (processor, requested_at_ms) in self._attempts.items():
            payment = self.pending.get(correlation_id)
            if payment is not None:
                payment.unsettled_on = processor
                payment.requested_at_ms = requested_at_ms


def read_journal(path: str) -> Recovered:
    state = Recovered()
    try:
        with open(path, encoding="ascii", errors="replace", newline="\n") as journal:
            # A torn last line was never acted on.
            state.apply_lines(line for line in journal if line.endswith("\n"))
    except FileNotFoundError:
        return state
    state.settle_unsettled()
    return state


def lock(path: str, wait: float) -> int:
    """Hold `path`'s lock file, which its owner keeps for as long as it runs; JournalInUse if
    another process still holds it after `wait` seconds."""
    descriptor = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise JournalInUse(f"journal {path} is in use by another process") from None
            time.sleep(0.01)


def _lines(state: Recovered) -> list[str]:
    lines = [] if state.last_incarnation is None else [f"I {state.last_incarnation}\n"]
    lines += [
        f"C {c.correlation_id} {c.processor} {c.requested_at_ms} {c.cents} {c.accepted_ms}\n"
        for c in state.confirmed_entries
    ]
    for payment in state.pending.values():
        lines.append(f"A {payment.correlation_id} {payment.cents} {payment.accepted_ms}\n")
        if payment.unsettled_on is not None:
            lines.append(
                f"S {payment.correlation_id} {payment.unsettled_on} {payment.requested_at_ms}\n"
            )
    return lines


class NoJournal:
    """For a replica run without a journal: a crash loses what it held in memory."""

    size = 0

    def recover(self) -> Recovered:
        return Recovered()

    def accepted(self, payment: Payment) -> None:
        pass

    def sent(self, payment: Payment, processor: str, requested_at_ms: int) -> None:
        pass

    def not_stored(self, payment: Payment) -> None:
        pass

    def confirmed(
        self, payment: Payment, processor: str, requested_at_ms: int, cents: int
    ) -> None:
        pass

    def purged(self, up_to_ms: int) -> None:
        pass

    def incarnation(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


class Journal:
    def __init__(self, path: str, *, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        self._fd = -1
        self._lock = -1
        self.size = 0  # bytes in the file: where a short write is cut back to

    def recover(self) -> Recovered:
        """Take the journal (JournalInUse if another process has it), read what an earlier
        run left, rewrite it compacted, and open it for appending."""
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
        # A purge appending for a dead replica holds the lock for microseconds.
        self._lock = lock(self._path, wait=5.0)
        state = read_journal(self._path)
        compacted = self._path + ".compacting"
        with open(compacted, "w", encoding="ascii") as out:
            out.writelines(_lines(state))
            out.flush()
            os.fsync(out.fileno())
        os.replace(compacted, self._path)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size
        return state

    def _write(self, line: bytes) -> None:
        """The whole line or an OSError: a short write (a full disk) is cut off again, so no
        torn line is left for the next one to run into, and the fact is not acted on."""
        written = os.write(self._fd, line)
        if written != len(line):
            os.ftruncate(self._fd, self.size)
            raise OSError(errno.ENOSPC, f"journal line written short ({written} of {len(line)})")
        self.size += written

    def accepted(self, payment: Payment) -> None:
        line = b"A %s %d %d\n" % (
            payment.correlation_id.encode(),
            payment.cents,
            payment.accepted_ms,
        )
        self._write(line)
        if self._fsync:
            os.fsync(self._fd)

    def sent(self, payment: Payment, processor: str, requested_at_ms: int) -> None:
        self._write(f"S {payment.correlation_id} {processor} {requested_at_ms}\n".encode())

    def not_stored(self, payment: Payment) -> None:
        self._write(f"R {payment.correlation_id}\n".encode())

    def confirmed(
        self, payment: Payment, processor: str, requested_at_ms: int, cents: int
    ) -> None:
        line = f"C {payment.correlation_id} {processor} {requested_at_ms} {cents} "
        self._write(f"{line}{payment.accepted_ms}\n".encode())

    def purged(self, up_to_ms: int) -> None:
        self._write(b"P %d\n" % up_to_ms)

    def incarnation(self, name: str) -> None:
        self._write(f"I {name}\n".encode())

    def close(self) -> None:
        for descriptor in (self._fd, self._lock):
            if descriptor >= 0:
                os.close(descriptor)
        self._fd = self._lock = -1
