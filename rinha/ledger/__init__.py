"""The ledger: every payment a processor confirmed, with the requestedAt that was sent.

One small interface, two stores: in this process (embedded) and in MongoDB, shared by the
replicas (rinha/cluster/store/ledger.py). `record` never waits (a store that needs I/O batches it
off the request path); `summary` answers for an inclusive window of epoch milliseconds, or
raises `LedgerUnavailable` rather than give a figure it cannot vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

PROCESSORS = ("default", "fallback")


@dataclass(frozen=True, slots=True)
class Totals:
    count: int = 0
    cents: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.count + other.count, self.cents + other.cents)

    def __sub__(self, other: Totals) -> Totals:
        return Totals(self.count - other.count, self.cents - other.cents)


Summary = dict[str, Totals]


def empty_summary() -> Summary:
    return {name: Totals() for name in PROCESSORS}


class LedgerUnavailable(Exception):
    """The store cannot answer now; nothing recorded is lost by this."""


class Ledger(Protocol):
    def record(
        self,
        correlation_id: str,
        processor: str,
        requested_at_ms: int,
        cents: int,
        accepted_ms: int,
    ) -> None: ...

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary: ...

    async def purge(self) -> int:
        """Forget every record of a payment accepted up to now, stored ones included; the
        purge's moment."""

    async def close(self) -> None: ...
