"""An append-only journal: what a replica accepted, attempted and confirmed survives its crash.

Every fact is one line written with a single `write()` on an `O_APPEND` descriptor before the
fact is acted on: the 202 leaves after its `A` line, a processor call after its `S` line. A
write() is in the kernel once it returns, so a killed process loses nothing; `fsync` (a
setting) also covers the machine losing power, at the price of a disk flush per acceptance.

    A <id> <cents>                    accepted (answered 202)
    S <id> <processor> <requested_ms> sent: an attempt is under way with this requestedAt
    R <id>                            the last attempt is known not stored (refused, released)
    C <id> <processor> <requested_ms> <cents>   confirmed and recorded in the ledger
    P                                 purged: confirmed payments and known ids are forgotten

Recovery replays the lines: confirmed payments rebuild the ledger, accepted ones without a
confirmation are pending again, and one whose last attempt is neither confirmed nor refused is
settled on that processor with the same requestedAt before it may go anywhere else (it may
have been stored). A torn last line is ignored: its fact was never acted on. Start-up rewrites
the journal compacted to what recovery needs.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from rinha.payments import Payment


@dataclass(frozen=True, slots=True)
class Confirmed:
    correlation_id: str
    processor: str
    requested_at_ms: int
    cents: int


@dataclass(slots=True)
class Recovered:
    confirmed: list[Confirmed] = field(default_factory=list)
    pending: dict[str, Payment] = field(default_factory=dict)
    known_ids: set[str] = field(default_factory=set)


def _apply(state: Recovered, attempts: dict[str, tuple[str, int]], words: list[str]) -> None:
    kind = words[0]
    if kind == "A" and len(words) == 3:
        correlation_id = words[1]
        state.known_ids.add(correlation_id)
        state.pending.setdefault(correlation_id, Payment(correlation_id, int(words[2])))
    elif kind == "S" and len(words) == 4:
        attempts[words[1]] = (words[2], int(words[3]))
    elif kind == "R" and len(words) == 2:
        attempts.pop(words[1], None)
    elif kind == "C" and len(words) == 5:
        correlation_id = words[1]
        # A compacted journal keeps only this line for a confirmed payment: it is known too.
        state.known_ids.add(correlation_id)
        state.pending.pop(correlation_id, None)
        attempts.pop(correlation_id, None)
        state.confirmed.append(Confirmed(correlation_id, words[2], int(words[3]), int(words[4])))
    elif kind == "P" and len(words) == 1:
        state.confirmed.clear()
        state.known_ids.clear()
    else:
        raise ValueError("not a journal line")


def read_journal(path: str) -> Recovered:
    state = Recovered()
    attempts: dict[str, tuple[str, int]] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # torn by a crash mid-write
                try:
                    _apply(state, attempts, line.split())
                except (ValueError, IndexError):
                    continue
    except FileNotFoundError:
        return state
    for correlation_id, (processor, requested_at_ms) in attempts.items():
        payment = state.pending.get(correlation_id)
        if payment is not None:
            payment.unsettled_on = processor
            payment.requested_at_ms = requested_at_ms
    return state


def _lines(state: Recovered) -> list[str]:
    lines = [
        f"C {c.correlation_id} {c.processor} {c.requested_at_ms} {c.cents}\n"
        for c in state.confirmed
    ]
    for payment in state.pending.values():
        lines.append(f"A {payment.correlation_id} {payment.cents}\n")
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

    def purged(self) -> None:
        pass

    def close(self) -> None:
        pass


class Journal:
    def __init__(self, path: str, *, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        self._fd = -1
        self.size = 0  # bytes in the file: where a short write is cut back to

    def recover(self) -> Recovered:
        """Read what an earlier run left, rewrite it compacted, and open for appending."""
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
        self._write(b"A %s %d\n" % (payment.correlation_id.encode(), payment.cents))
        if self._fsync:
            os.fsync(self._fd)

    def sent(self, payment: Payment, processor: str, requested_at_ms: int) -> None:
        self._write(f"S {payment.correlation_id} {processor} {requested_at_ms}\n".encode())

    def not_stored(self, payment: Payment) -> None:
        self._write(f"R {payment.correlation_id}\n".encode())

    def confirmed(
        self, payment: Payment, processor: str, requested_at_ms: int, cents: int
    ) -> None:
        line = f"C {payment.correlation_id} {processor} {requested_at_ms} {cents}\n"
        self._write(line.encode())

    def purged(self) -> None:
        self._write(b"P\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
