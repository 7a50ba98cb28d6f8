"""The in-process ledger: per processor, requestedAt sorted with prefix sums of cents.

Payments are stamped when sent and recorded when confirmed, so most records arrive in
requestedAt order and are appended. Not all: when a processor's announced delay drops, every
payment stamped with the lower delay lands before the last few seconds' worth stamped with the
higher one, and shifting the prefix sums after each such record would rebuild them each time
(docs/measurements.md). Those records wait aside and are put in their places together, at the
next summary or once there are many, so the sums after them are rebuilt once. A summary is two
bisections per processor, O(log n).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate

from rinha.clock import now_ms
from rinha.ledger import PROCESSORS, Summary, Totals

# Records that arrived out of order are put in their places at the latest when this many wait.
_MAX_LATE = 4096


class _Series:
    __slots__ = ("accepted", "late", "prefix", "times")

    def __init__(self) -> None:
        # Epoch milliseconds as 8-byte machine integers, not int objects (40 bytes with their
        # list slot): a replica holds every payment of the cluster, in its own ledger or in
        # its peers' (rinha/cluster/peers.py).
        self.times = array("q")
        # prefix[i] is the sum of cents of the first i payments in time order; unbounded.
        self.prefix: list[int] = [0]
        # When each payment in `times` was accepted: a purge forgets by that moment.
        self.accepted = array("q")
        # (requestedAt, cents, accepted) of records earlier than the last one in `times`.
        self.late: list[tuple[int, int, int]] = []

    def add(self, at_ms: int, cents: int, accepted_ms: int) -> None:
        times = self.times
        if not times or times[-1] <= at_ms:
            times.append(at_ms)
            self.prefix.append(self.prefix[-1] + cents)
            self.accepted.append(accepted_ms)
            return
        self.late.append((at_ms, cents, accepted_ms))
        if len(self.late) >= _MAX_LATE:
            self._place_late()

    def _place_late(self) -> None:
        """Merge the late records in, rebuilding the prefix sums from the first of them on."""
        late = sorted(self.late)
        self.late = []
        start = bisect_right(self.times, late[0][0])
        merged = sorted(self._records(start) + late)  # two sorted runs: one linear merge
        self._replace(start, merged)

    def _records(self, start: int) -> list[tuple[int, int, int]]:
        """(requestedAt, cents, accepted) of the records in place from `start` on."""
        times, prefix, accepted = self.times, self.prefix, self.accepted
        return [
            (times[i], prefix[i + 1] - prefix[i], accepted[i]) for i in range(start, len(times))
        ]

    def _replace(self, start: int, records: list[tuple[int, int, int]]) -> None:
        del self.times[start:]
        del self.prefix[start + 1 :]
        del self.accepted[start:]
        self.times.extend(at for at, _, _ in records)
        self.prefix.extend(
            accumulate((cents for _, cents, _ in records), initial=self.prefix.pop())
        )
        self.accepted.extend(accepted for _, _, accepted in records)

    def forget(self, up_to_ms: float) -> None:
        """Every record of a payment accepted up to `up_to_ms`."""
        if self.late:
            self._place_late()
        self._replace(0, [r for r in self._records(0) if r[2] > up_to_ms])

    def totals(self, from_ms: int | None, to_ms: int | None) -> Totals:
        if self.late:
            self._place_late()
        times = self.times
        low = 0 if from_ms is None else bisect_left(times, from_ms)
        high = len(times) if to_ms is None else bisect_right(times, to_ms)
        if high <= low:
            return Totals()
        return Totals(high - low, self.prefix[high] - self.prefix[low])


class EmbeddedLedger:
    def __init__(self) -> None:
        self._series = {name: _Series() for name in PROCESSORS}
        self._latest_accepted_ms = -1

    def record(
        self,
        correlation_id: str,
        processor: str,
        requested_at_ms: int,
        cents: int,
        accepted_ms: int,
    ) -> None:
        # One record per confirmed payment is the dispatcher's invariant; ids are not kept.
        self._series[processor].add(requested_at_ms, cents, accepted_ms)
        self._latest_accepted_ms = max(self._latest_accepted_ms, accepted_ms)

    def totals(self, from_ms: int | None, to_ms: int | None) -> Summary:
        return {name: series.totals(from_ms, to_ms) for name, series in self._series.items()}

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        return self.totals(from_ms, to_ms)

    def forget(self, up_to_ms: float) -> None:
        """Forget the payments accepted up to `up_to_ms`; a purge that arrives late (its
        replica stalled) keeps what was accepted after it was asked."""
        if up_to_ms >= self._latest_accepted_ms:
            self._series = {name: _Series() for name in PROCESSORS}
            return
        for series in self._series.values():
            series.forget(up_to_ms)

    async def purge(self) -> int:
        at_ms = now_ms()
        self.forget(at_ms)
        return at_ms

    async def close(self) -> None:
        pass
