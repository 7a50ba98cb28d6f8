"""One host's replicas, as each sees the others: their journals, read to add up their
totals, and their control sockets, to reach them for a purge or a health report.

Every replica's journal says what it confirmed and what it holds pending, line by line before
it acts on it (rinha/journal.py), so a peer's journal read now is exact even for a replica
that was just killed. A peer that is down (its journal's lock is free) gets a purge appended
to its journal, which summaries read at once and it obeys when it starts again.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from rinha.journal import Confirmed, JournalInUse, Replay, cut_torn_line, lock, read_piece
from rinha.ledger import Summary, Totals
from rinha.ledger.embedded import EmbeddedLedger
from rinha.processor_client import HealthReport

# Control-socket routes.
PURGE_PATH = "/control/purge"
HEALTH_PATH = "/control/health"
# A replica reads its peers' journals this often between summaries, so that a summary reads
# only the last second's lines: read all at once, late in a run, a journal's backlog took
# enough CPU at once for the contest's caps to throttle the replica while its POSTs waited.
FOLLOW_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """A peer's attempt under way, as its journal says."""

    correlation_id: str
    processor: str
    requested_at_ms: int
    cents: int
    # Every requestedAt its replica sent it with: a processor that has it with another one
    # has another replica's acceptance of the id (rinha/delivery/settle.py).
    sent_stamps: tuple[int, ...]


class PeerUnavailable(Exception):
    """A peer replica could not be reached or read; the cluster-wide answer is unknown now."""


def encode_health(reports: dict[str, HealthReport]) -> bytes:
    return orjson.dumps({name: [r.failing, r.min_response_ms] for name, r in reports.items()})


def encode_purge(up_to_ms: int) -> bytes:
    return orjson.dumps({"upToMs": up_to_ms})


def decode_purge(body: bytes) -> int:
    """The moment a purge forgets up to: what a replica accepted after it was asked stays,
    however late the request reaches it (a stalled replica reads it when it resumes)."""
    return int(orjson.loads(body)["upToMs"])


def decode_health(body: bytes) -> dict[str, HealthReport]:
    return {name: HealthReport(bool(f), int(ms)) for name, (f, ms) in orjson.loads(body).items()}


async def _on_every_peer(calls: Iterable[Awaitable[None]]) -> None:
    """Every call runs to its end, so one peer's failure leaves none half done; the first
    failure is raised after."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class Peer:
    """Another replica: its control socket and its journal."""

    def __init__(self, control: str, journal: str, timeout: float) -> None:
        self.journal = PeerJournal(journal)
        # The lock file its replica holds while it runs (rinha/journal.py, `lock`).
        self._lock = os.open(journal + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=control),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def call(self, method: str, path: str, data: bytes | None = None) -> None:
        try:
            async with self._session.request(method, "http://peer" + path, data=data) as answer:
                await answer.read()
                if answer.status != 200:
                    raise PeerUnavailable(f"peer answered {answer.status} to {path}")
        except (TimeoutError, aiohttp.ClientError) as error:
            raise PeerUnavailable(str(error) or type(error).__name__) from error

    def knows(self, correlation_id: str) -> bool:
        """Its journal says it accepted this id. A dead peer's journal no longer grows, and is
        read to its end first: HAProxy sends a dead replica's ids to the others, and a
        client that retries after that replica's 502 sends one it may have accepted."""
        journal = self.journal
        if correlation_id in journal.known_ids:
            return True
        # Dead when no live process holds its journal's lock (killed, not started again yet).
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        try:
            journal.open_current()
            while journal.read_chunk():
                pass
        except OSError:
            return False  # its summary answers 503 and says why
        return correlation_id in journal.known_ids

    async def read_journal(self) -> None:
        """Take in whatever the peer's journal gained since the last read."""
        journal = self.journal
        try:
            journal.open_current()
            while journal.read_chunk():
                await asyncio.sleep(0)  # the POSTs that arrived meanwhile go first
        except OSError as error:
            raise PeerUnavailable(f"{journal.path}: {error}") from error

    async def purge(self, up_to_ms: int) -> None:
        try:
            await self.call("POST", PURGE_PATH, encode_purge(up_to_ms))
        except PeerUnavailable:
            try:
                purge_unowned(self.journal.path, up_to_ms)
            except JournalInUse:
                raise PeerUnavailable(f"{self.journal.path}: running, not answering") from None
            except OSError as error:
                raise PeerUnavailable(str(error)) from error

    async def close(self) -> None:
        self.journal.close()
        os.close(self._lock)
        await self._session.close()


class Peers:
    """The other replicas of this host's cluster."""

    def __init__(self, peers: Sequence[tuple[str, str]], *, timeout: float = 1.0) -> None:
        self._peers = [Peer(control, journal, timeout) for control, journal in peers]

    def know(self, correlation_id: str) -> bool:
        """A peer accepted this id: it is that replica's payment."""
        # Asked for every new payment: a plain loop, without any()'s generator.
        for peer in self._peers:
            if peer.knows(correlation_id):
                return True
        return False

    async def totals(self, from_ms: int | None, to_ms: int | None) -> Summary:
        """What every peer's journal says it confirmed in the window and holds pending."""
        totals: Summary = {}
        for peer in self._peers:
            await peer.read_journal()
            for name, part in peer.journal.totals(from_ms, to_ms).items():
                totals[name] = totals.get(name, Totals()) + part
        return totals

    def overdue(self, quiet_for: float, requested_before_ms: int) -> list[Attempt]:
        """The attempts under way stamped before `requested_before_ms` of every peer whose
        journal has not grown for `quiet_for` seconds: a replica under way journals its
        answers as they come."""
        quiet_since = time.monotonic() - quiet_for
        return [
            attempt
            for peer in self._peers
            if peer.journal.grew_at < quiet_since
            for attempt in peer.journal.overdue(requested_before_ms)
        ]

    async def follow(self) -> None:
        """Read every peer's journal up to its end once per FOLLOW_INTERVAL, forever, so that a
        summary only reads what was written since."""
        while True:
            for peer in self._peers:
                try:
                    await peer.read_journal()
                except PeerUnavailable:
                    pass  # a summary meanwhile answers 503 and says why
            await asyncio.sleep(FOLLOW_INTERVAL)

    async def purge(self, up_to_ms: int) -> None:
        await _on_every_peer(peer.purge(up_to_ms) for peer in self._peers)

    async def push_health(self, reports: dict[str, HealthReport]) -> None:
        body = encode_health(reports)
        await _on_every_peer(peer.call("PUT", HEALTH_PATH, body) for peer in self._peers)

    async def close(self) -> None:
        for peer in self._peers:
            await peer.close()


class PeerJournal(Replay):
    """Another replica's journal, read up to its end whenever a summary needs that replica's
    part: what it confirmed and what it holds pending. Its lines are written before they are
    acted on, so this is exact even for a replica that was just killed."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Kept open between reads: the open descriptor pins the inode, so a journal replaced
        # by a restart can never reuse the number compared below.
        self._fd = -1
        self._inode = -1
        self._offset = 0  # just past the last whole line taken in
        self.grew_at = time.monotonic()  # when a read last found new lines
        self._forget_all()

    def _forget_all(self) -> None:
        self._ledger = EmbeddedLedger()
        self._pending: dict[str, tuple[int, int]] = {}  # id -> cents, accepted_ms
        self._pending_cents = 0
        self.known_ids: dict[str, int] = {}  # every id accepted since the last purge, and when
        # A pending payment's attempt under way: processor and requestedAt.
        self._attempts: dict[str, tuple[str, int]] = {}
        self._sent_stamps: dict[str, tuple[int, ...]] = {}  # of every attempt, pending ones'

    def purged(self, up_to_ms: float) -> None:
        self._ledger.forget(up_to_ms)
        self._pending = {i: p for i, p in self._pending.items() if p[1] > up_to_ms}
        self._pending_cents = sum(cents for cents, _ in self._pending.values())
        self._attempts = {i: a for i, a in self._attempts.items() if i in self._pending}
        self._sent_stamps = {i: t for i, t in self._sent_stamps.items() if i in self._pending}
        self.known_ids = {i: at for i, at in self.known_ids.items() if at > up_to_ms}

    def accepted(self, correlation_id: str, cents: int, accepted_ms: int) -> None:
        if correlation_id in self.known_ids:
            return  # a retry answered while the first acceptance was being read back
        self.known_ids[correlation_id] = accepted_ms
        self._pending[correlation_id] = (cents, accepted_ms)
        self._pending_cents += cents

    def sent(self, correlation_id: str, processor: str, requested_at_ms: int) -> None:
        if correlation_id in self._pending:
            self._attempts[correlation_id] = (processor, requested_at_ms)
            stamps = self._sent_stamps.get(correlation_id, ())
            self._sent_stamps[correlation_id] = (*stamps, requested_at_ms)

    def not_stored(self, correlation_id: str) -> None:
        self._attempts.pop(correlation_id, None)

    def overdue(self, requested_before_ms: int) -> list[Attempt]:
        """Attempts under way stamped before `requested_before_ms`, no answer journaled."""
        return [
            Attempt(
                correlation_id,
                processor,
                requested_at_ms,
                self._pending[correlation_id][0],
                self._sent_stamps[correlation_id],
            )
            for correlation_id, (processor, requested_at_ms) in self._attempts.items()
            if requested_at_ms < requested_before_ms
        ]

    def dropped(self, correlation_id: str) -> None:
        self._attempts.pop(correlation_id, None)
        self._sent_stamps.pop(correlation_id, None)
        self._pending_cents -= self._pending.pop(correlation_id, (0, 0))[0]

    def confirmed(self, entry: Confirmed) -> None:
        pending = self._pending.pop(entry.correlation_id, None)
        if pending is None:
            # Not accepted in what was read: a compacted journal keeps only this line.
            self.known_ids.setdefault(entry.correlation_id, entry.accepted_ms)
        else:
            self._pending_cents -= pending[0]
            self._attempts.pop(entry.correlation_id, None)
            self._sent_stamps.pop(entry.correlation_id, None)
        self._ledger.record(
            entry.correlation_id,
            entry.processor,
            entry.requested_at_ms,
            entry.cents,
            entry.accepted_ms,
        )

    def open_current(self) -> None:
        """Make sure the file being read is the journal there now: one replaced (its replica
        restarted and compacted it) or cut back is read again from its start."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return  # that replica has not started yet: it has nothing
        if self._fd < 0 or status.st_ino != self._inode or status.st_size < self._offset:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_RDONLY)
            self._inode = os.fstat(self._fd).st_ino
            self._offset = 0
            self._forget_all()

    def read_chunk(self) -> bool:
        """Take in the whole lines of a piece written since the last read (rinha/journal.py:
        a replica restarted late in a run has megabytes to read again, and other work runs
        between pieces); True when more may follow."""
        if self._fd < 0:
            return False
        taken, whole = read_piece(self, self._fd, self._offset)
        if taken:
            self._offset += taken
            self.grew_at = time.monotonic()
        return whole

    def totals(self, from_ms: int | None, to_ms: int | None) -> Summary:
        totals = self._ledger.totals(from_ms, to_ms)
        totals["pending"] = Totals(len(self._pending), self._pending_cents)
        return totals

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def purge_unowned(path: str, up_to_ms: int) -> None:
    """Append a purge to the journal of a replica that is not running (JournalInUse if it
    is): it forgets what it accepted up to `up_to_ms` on its next start, and summaries that
    read it at once."""
    held = lock(path, wait=0)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            # A line torn by the replica's death was never acted on; followed by a newline,
            # its prefix could read as a whole line of other words.
            cut_torn_line(descriptor)
            line = b"P %d\n" % up_to_ms
            if os.write(descriptor, line) != len(line):
                raise OSError(errno.ENOSPC, f"purge not written to {path}")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    finally:
        os.close(held)
