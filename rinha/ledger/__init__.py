"""The ledger: every payment a processor confirmed, with the requestedAt that was sent.

One small interface, several stores. `record` never waits (a store that needs I/O batches it
off the request path); `summary` answers for an inclusive window of epoch milliseconds, or
raises `LedgerUnavailable` rather than give a figure it cannot vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

PROCESSORS = ("default", "fallback")
STORE_SCHEMES = ("mongodb://", "mongodb+srv://")


@dataclass(frozen=True, slots=True)
class Totals:
    count: int = 0
    cents: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.count + other.count, self.cents + other.cents)


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

    def forget(self) -> None:
        """Drop, at once, every record this process holds; a shared store keeps what it has
        stored already."""

    async def purge(self) -> None:
        """Forget every record, stored ones included."""

    async def close(self) -> None: ...


def open_ledger(url: str | None) -> Ledger:
    """The embedded ledger, or the store that `url` names (`mongodb://…`)."""
    if not url:
        from rinha.ledger.embedded import EmbeddedLedger

        return EmbeddedLedger()
    if url.startswith(STORE_SCHEMES):
        from rinha.ledger.mongodb import MongoLedger

        return MongoLedger(url)
    raise ValueError(f"RINHA_LEDGER must be empty or a mongodb:// URL, not {url!r}")
