"""The audit (SPEC.md §4): under a burst of payments while the default processor fails and
slows down, our summary equals the processors' own at every sampled moment and at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.support.audit import assert_exact
from tests.support.clients import Service
from tests.support.senders import burst

PAYMENTS = 1500


def test_summary_matches_processors_throughout_a_burst(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # Payments wait at most 0.3 s for a failing default, so both processors are used.
    service = service_factory("--max-hold", "0.3")
    found = asyncio.run(
        burst(fresh_processors, lambda index: [service.url], [service.url], PAYMENTS)
    )
    assert len(found.accepted) == PAYMENTS
    assert found.audits >= 5
    assert found.differences == []
    theirs = assert_exact(service, fresh_processors)
    assert theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"] == PAYMENTS
    # Both were really used: the default failed part of the time.
    assert theirs["default"]["totalRequests"] > 0 and theirs["fallback"]["totalRequests"] > 0
