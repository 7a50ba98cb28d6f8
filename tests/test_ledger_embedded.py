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


def assert_matches_brute_force(
    ledger: EmbeddedLedger, entries: list[tuple[str, int, int]], rng: random.Random, checks: int
) -> None:
    top = max(at for _, at, _ in entries) + 100
    for _ in range(checks):
        low = rng.choice([None, rng.randint(-400, top)])
        high = rng.choice([None, rng.randint(-400, top)])
        summary = ledger.totals(low, high)
        for name in ("default", "fallback"):
            assert summary[name] == brute(entries, name, low, high)


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
    assert_matches_brute_force(ledger, entries, rng, 300)


def test_summary_matches_brute_force_after_an_announced_delay_drops() -> None:
    # Stamped send time + delay: once the delay drops from 5000 to 0, each new record lands
    # before the last 5 s of them, and summaries come in between.
    rng = random.Random(11)
    ledger = EmbeddedLedger()
    entries = []
    for sent in range(20_000):
        delay = 5000 if 4000 <= sent < 9000 else 0
        entry = (rng.choice(["default", "fallback"]), sent + delay, rng.randint(1, 10_000))
        entries.append(entry)
        ledger.record(str(sent), *entry, 0)
        if sent % 1000 == 999:
            assert_matches_brute_force(ledger, entries, rng, 3)
    assert_matches_brute_force(ledger, entries, rng, 100)


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
