"""The in-process ledger: per processor, requestedAt sorted with prefix sums of cents.

Payments are stamped when sent and recorded when confirmed, so records arrive almost in
requestedAt order: an insertion lands at or near the end and the prefix sums after it are few
to fix. A summary is two bisections per processor, O(log n).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from rinha.ledger import PROCESSORS, Summary, Totals


class _Series:
    __slots__ = ("prefix", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        # prefix[i] is the sum of cents of the first i payments in time order.
        self.prefix: list[int] = [0]

    def add(self, at_ms: int, cents: int) -> None:
        times, prefix = self.times, self.prefix
        if not times or times[-1] <= at_ms:
            times.append(at_ms)
            prefix.append(prefix[-1] + cents)
            return
        index = bisect_right(times, at_ms)
        times.insert(index, at_ms)
        prefix.insert(index + 1, prefix[index] + cents)
        for later in range(index + 2, len(prefix)):
            prefix[later] += cents

    def totals(self, from_ms: int | None, to_ms: int | None) -> Totals:
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
