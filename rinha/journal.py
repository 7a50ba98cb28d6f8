"""An append-only journal: what a replica accepted, attempted and confirmed survives its crash.

Every fact is one line written with a single `write()` on an `O_APPEND` descriptor before the
fact is acted on: the 202 leaves after its `A` line, a processor call after its `S` line. A
write() is in the kernel once it returns, so a killed process loses nothing; `fsync` (a
setting) also covers the machine losing power, at the price of a disk flush per acceptance.

    A <id> <cents> <accepted_ms>      accepted (answered 202); again for an id already
                                      accepted: a client's retry, the first one stands
    S <id> <processor> <requested_ms> sent: an attempt is under way with this requestedAt
    R <id>                            the last attempt is known not stored (refused, released)
    C <id> <processor> <requested_ms> <cents> <accepted_ms>   confirmed and recorded
    D <id>                            another's: the processor holds this id with a requestedAt
                                      this replica never sent (another replica accepted it
                                      too, and records it); this copy is dropped
    P <at_ms>                         purged: what was accepted up to at_ms is forgotten (a
                                      bare P, written before purges carried their moment:
                                      everything accepted before it)
    I <incarnation>                   the run that wrote the lines after it (shared store)

Recovery replays the lines: confirmed payments rebuild the ledger, accepted ones without a
confirmation are pending again, and one whose last attempt is neither confirmed nor refused is
settled on that processor with the same requestedAt before it may go anywhere else (it may
have been stored). A torn last line was never acted on: it is cut off at start.

Start-up takes no time that grows with the journal: a run opens the journal and appends after
what the earlier runs left at once, and reads that part back in pieces while it answers
(`recover`), so its lines come after every earlier run's. Once it is taken up, the journal is
rewritten compacted beside it, a piece at a time, with this run's lines appended to the
rewrite and the rewrite renamed over the journal in one step (`compact`).

A running replica holds its journal's lock file (`lock`), so that no second process writes
it; on one host, the other replicas read it too (rinha/cluster/peers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rinha.ledger import PROCESSORS
from rinha.payments import Payment

# The moment of a bare `P` line: everything accepted before it.
EVERYTHING = math.inf
# What earlier runs left is read back, and rewritten compacted, in pieces of about this many
# bytes, with the requests that arrived meanwhile answered between them.
PIECE = 16384


# Not frozen: a frozen dataclass is built three times slower, and every replica builds one
# for each line its peers confirm.
@dataclass(slots=True)
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
        elif kind == "D" and len(words) == 2:
            self.dropped(words[1])
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

    def dropped(self, correlation_id: str) -> None:
        pass

    def purged(self, up_to_ms: float) -> None:
        pass

    def incarnation(self, name: str) -> None:
        pass


class Recovered(Replay):
    """What a replica takes up again at start: its ledger, its pending payments (each with
    its attempts, the last one unsettled or not), every id it ever accepted and, with a shared
    store, the run whose claims in the store those payments are."""

    def __init__(self) -> None:
        self.confirmed_entries: list[Confirmed] = []
        self.pending: dict[str, Payment] = {}
        self.known_ids: dict[str, int] = {}  # when each was accepted
        self.last_incarnation: str | None = None
        # Every attempt of a pending payment, (processor, requestedAt), in order: one known
        # not stored may yet be, held by its processor, and proves the payment ours then.
        self._attempts: dict[str, list[tuple[str, int]]] = {}
        self._unsettled: set[str] = set()  # ids whose last attempt is unresolved

    def accepted(self, correlation_id: str, cents: int, accepted_ms: int) -> None:
        if correlation_id in self.known_ids:
            return  # a retry answered while the first acceptance was being read back
        self.known_ids[correlation_id] = accepted_ms
        self.pending[correlation_id] = Payment(correlation_id, cents, accepted_ms)

    def sent(self, correlation_id: str, processor: str, requested_at_ms: int) -> None:
        if correlation_id in self.pending:
            self._attempts.setdefault(correlation_id, []).append((processor, requested_at_ms))
            self._unsettled.add(correlation_id)

    def not_stored(self, correlation_id: str) -> None:
        self._unsettled.discard(correlation_id)

    def confirmed(self, entry: Confirmed) -> None:
        # A compacted journal keeps only this line for a confirmed payment: it is known too.
        self.known_ids.setdefault(entry.correlation_id, entry.accepted_ms)
        self.dropped(entry.correlation_id)
        self.confirmed_entries.append(entry)

    def dropped(self, correlation_id: str) -> None:
        self.pending.pop(correlation_id, None)
        self._attempts.pop(correlation_id, None)
        self._unsettled.discard(correlation_id)

    def purged(self, up_to_ms: float) -> None:
        # A purge forgets what was accepted up to its moment, pending and in flight included.
        self.confirmed_entries = [c for c in self.confirmed_entries if c.accepted_ms > up_to_ms]
        self.pending = {i: p for i, p in self.pending.items() if p.accepted_ms > up_to_ms}
        self.known_ids = {i: at for i, at in self.known_ids.items() if at > up_to_ms}
        self._attempts = {i: a for i, a in self._attempts.items() if i in self.pending}
        self._unsettled &= self._attempts.keys()

    def incarnation(self, name: str) -> None:
        self.last_incarnation = name

    def settle_unsettled(self) -> None:
        """Give each pending payment its attempts' stamps, and mark one whose last attempt is
        unresolved to be settled there."""
        for correlation_id, attempts in self._attempts.items():
            payment = self.pending[correlation_id]
            payment.sent_stamps = tuple(requested_at_ms for _, requested_at_ms in attempts)
            if correlation_id in self._unsettled:
                payment.unsettled_on, payment.requested_at_ms = attempts[-1]

    def lines(self) -> Iterator[str]:
        """This state as the lines of a compacted journal. From the state's own records, not
        the payments', which the dispatcher changes as it sends them."""
        if self.last_incarnation is not None:
            yield f"I {self.last_incarnation}\n"
        for c in self.confirmed_entries:
            at, cents, accepted = c.requested_at_ms, c.cents, c.accepted_ms
            yield f"C {c.correlation_id} {c.processor} {at} {cents} {accepted}\n"
        for correlation_id, payment in self.pending.items():
            yield f"A {correlation_id} {payment.cents} {payment.accepted_ms}\n"
            attempts = self._attempts.get(correlation_id, [])
            for index, (processor, requested_at_ms) in enumerate(attempts, 1):
                yield f"S {correlation_id} {processor} {requested_at_ms}\n"
                if index < len(attempts) or correlation_id not in self._unsettled:
                    yield f"R {correlation_id}\n"


def read_piece(state: Replay, descriptor: int, offset: int, size: int = PIECE) -> tuple[int, bool]:
    """Apply to `state` the whole lines among `size` bytes of `descriptor` from `offset`
    (PIECE at most): the bytes taken, and whether the piece was read whole, so that more may
    follow. A line still being written, or torn, is left: its fact was never acted on."""
    data = os.pread(descriptor, size, offset)
    taken = data.rfind(b"\n") + 1
    if not taken and len(data) == PIECE:
        taken = PIECE  # no line is this long: an unreadable stretch, skipped
    state.apply_lines(data[:taken].decode("ascii", errors="replace").split("\n"))
    return taken, len(data) == size


def _pieces(lines: Iterable[str]) -> Iterator[bytes]:
    """`lines` joined into pieces of at least PIECE bytes, the last one shorter."""
    piece: list[str] = []
    size = 0
    for line in lines:
        piece.append(line)
        size += len(line)
        if size >= PIECE:
            yield "".join(piece).encode()
            piece, size = [], 0
    yield "".join(piece).encode()


def _write_whole(descriptor: int, data: bytes) -> None:
    written = os.write(descriptor, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"written short ({written} of {len(data)} bytes)")


def _end_of_last_line(descriptor: int, size: int) -> int:
    """Where the last whole line among the first `size` bytes of `descriptor` ends."""
    end = size
    while end > 0:
        start = max(0, end - PIECE)
        newline = os.pread(descriptor, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def cut_torn_line(descriptor: int) -> int:
    """Cut a torn last line (its writer died mid-write) off the file; where it now ends."""
    size = os.fstat(descriptor).st_size
    end = _end_of_last_line(descriptor, size)
    if end < size:
        os.ftruncate(descriptor, end)
    return end


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


class NoJournal:
    """For a replica run without a journal: a crash loses what it held in memory."""

    size = 0

    def open(self) -> None:
        pass

    async def recover(self) -> Recovered:
        return Recovered()

    async def compact(self, state: Recovered) -> None:
        pass

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

    def dropped(self, payment: Payment) -> None:
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
        self._earlier = 0  # bytes the earlier runs left: this run's lines follow them

    def open(self) -> None:
        """Take the journal (JournalInUse if another process has it), cut a torn last line
        off, and open it for appending: this run's lines follow what the earlier runs left,
        which `recover` reads."""
        os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
        # A purge appending for a dead replica holds the lock for microseconds.
        self._lock = lock(self._path, wait=5.0)
        self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        # Else this run's first line would be glued to it, and read as one bad line.
        self._earlier = self.size = cut_torn_line(self._fd)

    async def recover(self) -> Recovered:
        """What the earlier runs left, read back a piece at a time while this run answers."""
        state = Recovered()
        offset = 0
        while offset < self._earlier:  # a part that ends with a whole line (`open`)
            offset += read_piece(state, self._fd, offset, min(PIECE, self._earlier - offset))[0]
            await asyncio.sleep(0)
        state.settle_unsettled()
        return state

    async def compact(self, state: Recovered) -> None:
        """Rewrite the journal as `state`, what the earlier runs left as this run took it up,
        followed by this run's own lines. The rewrite is written beside the journal a piece
        at a time; then, in one step with no await, so that no line is appended meanwhile,
        this run's lines are copied after it and it is renamed over the journal. A crash at
        any point leaves a journal that recovers the same: the old one stays whole until the
        rename, which is atomic. Peers reading the journal read the rewrite from its start."""
        path = self._path + ".compacting"
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for piece in _pieces(state.lines()):
                _write_whole(descriptor, piece)
                await asyncio.sleep(0)
            # The bulk reaches the disk off the event loop; the rename must not come first.
            await asyncio.get_running_loop().run_in_executor(None, os.fsync, descriptor)
            this_run = os.pread(self._fd, self.size - self._earlier, self._earlier)
            _write_whole(descriptor, this_run)
            os.fsync(descriptor)
            os.replace(path, self._path)
        except BaseException:
            os.close(descriptor)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(self._fd)
        self._fd = descriptor
        self.size = os.fstat(descriptor).st_size

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

    def dropped(self, payment: Payment) -> None:
        self._write(f"D {payment.correlation_id}\n".encode())

    def purged(self, up_to_ms: int) -> None:
        self._write(b"P %d\n" % up_to_ms)

    def incarnation(self, name: str) -> None:
        self._write(f"I {name}\n".encode())

    def close(self) -> None:
        for descriptor in (self._fd, self._lock):
            if descriptor >= 0:
                os.close(descriptor)
        self._fd = self._lock = -1
