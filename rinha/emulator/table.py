"""The processor's payments, in memory: by correlationId, and in requestedAt order for summaries.

The official processor keeps them in PostgreSQL (`amount DECIMAL`, `requested_at TIMESTAMP`,
i.e. microseconds) and sums with `requested_at BETWEEN from AND to`. Here the amount is an `int`
of cents and requestedAt an `int` of epoch microseconds; two parallel lists sorted by
requestedAt let a summary bisect its window and sum one slice. Payments arrive roughly in
requestedAt order, so an insertion is nearly always an append.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcessedPayment:
    correlation_id: str  # canonical lowercase UUID
    cents: int
    requested_us: int


class PaymentTable:
    def __init__(self) -> None:
        self._by_id: dict[str, ProcessedPayment] = {}
        self._times: list[int] = []  # requested_us, ascending
        self._cents: list[int] = []  # cents of the payment at the same index

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, payment: ProcessedPayment) -> bool:
        """Store a payment; False (nothing stored) if its correlationId is already here."""
        if payment.correlation_id in self._by_id:
            return False
        self._by_id[payment.correlation_id] = payment
        at = bisect_right(self._times, payment.requested_us)
        self._times.insert(at, payment.requested_us)
        self._cents.insert(at, payment.cents)
        return True

    def get(self, correlation_id: str) -> ProcessedPayment | None:
        return self._by_id.get(correlation_id)

    def summary(self, from_us: int | None, to_us: int | None) -> tuple[int, int]:
        """(count, total cents) of payments with from_us <= requested_us <= to_us.

        A missing bound leaves that side open.
        """
        low = 0 if from_us is None else bisect_left(self._times, from_us)
        high = len(self._times) if to_us is None else bisect_right(self._times, to_us)
        if high <= low:
            return 0, 0
        return high - low, sum(self._cents[low:high])

    def purge(self) -> None:
        self._by_id.clear()
        self._times.clear()
        self._cents.clear()
