"""The embedded ledger's arithmetic against a brute-force count (rinha/ledger/embedded.py)."""

import asyncio
import random

from rinha.ledger import Totals
from rinha.ledger.embedded import EmbeddedLedger


def brute(
    entries: list[tuple[str, int, int]], name: str, low: int | None, high: int | None
) -> Totals:
    chosen = [
        cents
        for processor, at, cents in entries
        if processor == name and (low is None or at >= low) and (high is None or at <= high)
    ]
    return Totals(len(chosen), sum(chosen))


def test_summary_matches_brute_force_with_out_of_order_records() -> None:
    rng = random.Random(7)
    ledger = EmbeddedLedger()
    entries = []
    for _ in range(5000):
        # Mostly increasing times with some late arrivals, as confirmations come in.
        at = len(entries) + rng.randint(-300, 5)
        entry = (rng.choice(["default", "fallback"]), at, rng.randint(1, 10_000))
        entries.append(entry)
        ledger.record(str(len(entries)), *entry, 0)
    for _ in range(300):
        low = rng.choice([None, rng.randint(-400, 5100)])
        high = rng.choice([None, rng.randint(-400, 5100)])
        summary = asyncio.run(ledger.summary(low, high))
        for name in ("default", "fallback"):
            assert summary[name] == brute(entries, name, low, high)


def test_window_is_inclusive_at_both_ends() -> None:
    ledger = EmbeddedLedger()
    ledger.record("a", "default", 1000, 1990, 0)
    assert asyncio.run(ledger.summary(1000, 1000))["default"] == Totals(1, 1990)
    assert asyncio.run(ledger.summary(1001, None))["default"] == Totals()
    assert asyncio.run(ledger.summary(None, 999))["default"] == Totals()


def test_purge_empties_everything() -> None:
    ledger = EmbeddedLedger()
    ledger.record("b", "fallback", 5, 100, 0)
    asyncio.run(ledger.purge())
    assert asyncio.run(ledger.summary(None, None)) == {"default": Totals(), "fallback": Totals()}
