"""`GET /payments-summary` and `POST /purge-payments`: exact, inclusive windows on the
requestedAt that was sent, amounts with two decimals (SPEC.md §2, §3)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.clients import Service
from tests.support.processes import call


def shift(timestamp: str, milliseconds: int) -> str:
    moment = datetime.fromisoformat(timestamp) + timedelta(milliseconds=milliseconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_window_edges_are_inclusive_and_match_the_processor(
    service: Service, fresh_processors: Any
) -> None:
    correlation_id = str(uuid.uuid4())
    service.pay(correlation_id, 20.05)
    service.wait_settled()
    stored = fresh_processors.default.admin("GET", f"/payments/{correlation_id}")
    requested_at = stored.json()["requestedAt"]
    # Sent with whole milliseconds, as the test's windows end (SPEC.md §3); the processor
    # echoes it without trailing zeros, as the official one does.
    assert datetime.fromisoformat(requested_at.rstrip("Z")).microsecond % 1000 == 0
    windows = [
        (requested_at, requested_at, 1),
        (shift(requested_at, 1), None, 0),
        (None, shift(requested_at, -1), 0),
        (shift(requested_at, -1), shift(requested_at, 1), 1),
        (None, None, 1),
    ]
    for from_, to, expected in windows:
        ours = service.summary(from_, to)["default"]
        assert ours["totalRequests"] == expected, (from_, to)
        assert ours["totalAmount"] == (20.05 if expected else 0)
        # The processor counts everything when either bound is missing, as the official does.
        if from_ and to:
            theirs = fresh_processors.default.summary(from_, to)
            assert (theirs["totalRequests"], theirs["totalAmount"]) == (
                ours["totalRequests"],
                ours["totalAmount"],
            )


def test_amounts_are_rendered_with_two_decimals(service: Service) -> None:
    service.pay(amount=10)
    service.pay(amount=0.5)
    service.wait_settled()
    body = call(service.port, "GET", "/payments-summary").body
    assert b'"default":{"totalRequests":2,"totalAmount":10.50}' in body
    assert b'"fallback":{"totalRequests":0,"totalAmount":0.00}' in body


def test_bad_window_bounds_are_refused(service: Service) -> None:
    for query in ("from=yesterday", "to=2025-13-01T00:00:00.000Z"):
        reply = call(service.port, "GET", "/payments-summary?" + query)
        assert reply.status == 400
        assert reply.json()["error"]


def test_purge_forgets_recorded_payments(service: Service) -> None:
    service.pay()
    service.wait_settled()
    reply = call(service.port, "POST", "/purge-payments")
    assert reply.status == 200
    summary = service.summary()
    assert summary["default"] == {"totalRequests": 0, "totalAmount": 0}


def test_a_purge_forgets_payments_in_flight(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    service = service_factory("--journal", str(tmp_path / "journal"))
    fresh_processors.default.set_delay(1000)
    for _ in range(20):
        assert service.pay().status == 202
    time.sleep(0.3)  # sent; the processor holds them for its delay
    assert call(service.port, "POST", "/purge-payments").status == 200
    forgotten = {"totalRequests": 0, "totalAmount": 0}
    assert service.summary()["pending"] == forgotten
    time.sleep(1.5)  # the calls in flight are answered 200: nothing is recorded for them
    assert service.summary()["default"] == forgotten
    service.kill()
    service.restart()
    time.sleep(0.5)
    assert service.summary()["default"] == forgotten
    assert service.summary()["pending"] == forgotten
    assert fresh_processors.default.summary()["totalRequests"] == 20  # none sent again


def test_a_purge_forgets_held_payments(service: Service, fresh_processors: Any) -> None:
    fresh_processors.default.set_failure(True)
    for _ in range(10):
        assert service.pay().status == 202
    assert call(service.port, "POST", "/purge-payments").status == 200
    assert service.summary()["pending"]["totalRequests"] == 0
    fresh_processors.default.set_failure(False)
    time.sleep(1.0)
    assert service.summary()["default"]["totalRequests"] == 0
    assert fresh_processors.default.summary()["totalRequests"] == 0
