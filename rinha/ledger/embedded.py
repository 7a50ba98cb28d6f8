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

from bisect import bisect_left, bisect_right
from itertools import accumulate

from rinha.ledger import PROCESSORS, Summary, Totals

# Records that arrived out of order are put in their places at the latest when this many wait.
_MAX_LATE = 4096


class _Series:
    __slots__ = ("late", "prefix", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        # prefix[i] is the sum of cents of the first i payments in time order.
        self.prefix: list[int] = [0]
        # (requestedAt, cents) of records earlier than the last one in `times`.
        self.late: list[tuple[int, int]] = []

    def add(self, at_ms: int, cents: int) -> None:
        times = self.times
        if not times or times[-1] <= at_ms:
            times.append(at_ms)
            self.prefix.append(self.prefix[-1] + cents)
            return
        self.late.append((at_ms, cents))
        if len(self.late) >= _MAX_LATE:
            self._place_late()

    def _place_late(self) -> None:
        """Merge the late records in, rebuilding the prefix sums from the first of them on."""
        late = sorted(self.late)
        self.late = []
        times, prefix = self.times, self.prefix
        start = bisect_right(times, late[0][0])
        after = [(times[i], prefix[i + 1] - prefix[i]) for i in range(start, len(times))]
        merged = sorted(after + late)  # two sorted runs: one linear merge
        del times[start:]
        del prefix[start + 1 :]
        times.extend(at for at, _ in merged)
        prefix.extend(accumulate((cents for _, cents in merged), initial=prefix.pop()))

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

    def record(
        self,
        correlation_id: str,
        processor: str,
        requested_at_ms: int,
        cents: int,
        accepted_ms: int,
    ) -> None:
        # One record per confirmed payment is the dispatcher's invariant; ids are not kept.
        self._series[processor].add(requested_at_ms, cents)

    def totals(self, from_ms: int | None, to_ms: int | None) -> Summary:
        return {name: series.totals(from_ms, to_ms) for name, series in self._series.items()}

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        return self.totals(from_ms, to_ms)

    def forget(self) -> None:
        self._series = {name: _Series() for name in PROCESSORS}

    async def purge(self) -> None:
        self.forget()

    async def close(self) -> None:
        pass
