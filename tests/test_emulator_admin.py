"""The emulated processor's /admin routes (SPEC.md §3), each behind X-Rinha-Token."""

from __future__ import annotations

import json
import threading
import time
import uuid
from decimal import Decimal

import pytest

from tests.support.processes import call

ADMIN_ROUTES = [
    ("GET", "/admin/payments-summary", None),
    ("PUT", "/admin/configurations/token", {"token": "stolen"}),
    ("PUT", "/admin/configurations/delay", {"delay": 1234}),
    ("PUT", "/admin/configurations/failure", {"failure": True}),
    ("POST", "/admin/purge-payments", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
@pytest.mark.parametrize("headers", [{}, {"X-Rinha-Token": "wrong"}, {"X-Rinha-Token": ""}])
def test_admin_route_needs_the_token(fresh_processors, method, path, body, headers):
    processor = fresh_processors.default
    processor.pay()
    reply = call(processor.port, method, path, body, headers)
    assert reply.status == 401
    # Nothing changed: the token still works, delay and failure are as they were, the
    # payment is still there.
    assert processor.admin("PUT", "/admin/configurations/delay", {"delay": 0}).json()["was"] == 0
    failure = processor.admin("PUT", "/admin/configurations/failure", {"failure": False})
    assert failure.json()["was"] is False
    assert processor.summary()["totalRequests"] == 1


def test_token_can_be_changed(processor_factory):
    processor = processor_factory(token="s3cret")
    path = "/admin/payments-summary"
    assert call(processor.port, "GET", path, headers={"X-Rinha-Token": "123"}).status == 401
    assert processor.admin("GET", path).status == 200
    reply = processor.admin("PUT", "/admin/configurations/token", {"token": "n3w"})
    assert (reply.status, reply.body) == (204, b"")
    assert processor.admin("GET", path).status == 401
    processor.token = "n3w"
    assert processor.admin("GET", path).status == 200


def test_delay_configuration(fresh_processors):
    processor = fresh_processors.default
    path = "/admin/configurations/delay"
    reply = processor.admin("PUT", path, {"delay": 50})
    assert reply.status == 200
    assert reply.json() == {"config": "delay", "was": 0, "is": 50}
    assert processor.admin("PUT", path, {"delay": 0}).json() == {
        "config": "delay",
        "was": 50,
        "is": 0,
    }
    for bad in ({"delay": "fast"}, {"delay": 1.5}, {"delay": True}, {}):
        assert processor.admin("PUT", path, bad).status == 400
    reply = call(processor.port, "PUT", path, b'{"delay": 5}', {"X-Rinha-Token": "123"})
    assert reply.status == 415


def test_failure_configuration(fresh_processors):
    processor = fresh_processors.default
    path = "/admin/configurations/failure"
    reply = processor.admin("PUT", path, {"failure": True})
    assert reply.status == 200
    assert reply.json() == {"config": "failure", "was": False, "is": True}
    reply = processor.admin("PUT", path, {"failure": False})
    assert reply.json() == {"config": "failure", "was": True, "is": False}
    for bad in ({"failure": "yes"}, {"failure": 1}, {}):
        assert processor.admin("PUT", path, bad).status == 400


def test_purge_deletes_every_payment(fresh_processors):
    processor = fresh_processors.default
    correlation_id = str(uuid.uuid4())
    processor.pay(correlation_id)
    processor.pay()
    reply = processor.admin("POST", "/admin/purge-payments")
    assert reply.status == 200
    assert reply.json() == {"message": "All payments purged."}
    assert processor.summary()["totalRequests"] == 0
    assert call(processor.port, "GET", f"/payments/{correlation_id}").status == 404
    assert processor.pay(correlation_id).status == 200  # the correlationId is free again


# The test's audit windows end on whole milliseconds; payments keep full precision.
STAMPS = [
    "2025-07-15T12:34:18.9995Z",  # before the window
    "2025-07-15T12:34:19.000Z",  # its first instant
    "2025-07-15T12:34:19.1Z",
    "2025-07-15T12:34:19.161Z",  # its last instant
    "2025-07-15T12:34:19.1615Z",  # after the window, within its last millisecond
]
FROM, TO = "2025-07-15T12:34:19.000Z", "2025-07-15T12:34:19.161Z"


def exact_summary(processor, query: str = "") -> dict:
    reply = processor.admin("GET", f"/admin/payments-summary{query}")
    assert reply.status == 200
    return json.loads(reply.body, parse_float=Decimal)


def test_summary_window_is_inclusive_at_full_precision(fresh_processors):
    processor = fresh_processors.default
    for stamp in STAMPS:
        assert processor.pay(amount=20.05, requested_at=stamp).status == 200
    assert processor.summary(FROM, TO)["totalRequests"] == 3
    summary = exact_summary(processor, f"?from={FROM}&to={TO}")
    assert summary == {
        "totalRequests": 3,
        "totalAmount": Decimal("60.15"),
        "totalFee": Decimal("4.2105"),  # 60.15 × 0.07, unrounded as the official
        "feePerTransaction": Decimal("0.07"),
    }


def test_summary_missing_either_bound_covers_everything(fresh_processors):
    processor = fresh_processors.default
    for stamp in STAMPS:
        processor.pay(requested_at=stamp)
    assert processor.summary(from_=FROM)["totalRequests"] == 5
    assert processor.summary(to=TO)["totalRequests"] == 5
    assert processor.summary()["totalRequests"] == 5
    assert exact_summary(processor, "?from=&to=")["totalRequests"] == 5
    assert processor.summary(from_=TO, to=FROM)["totalRequests"] == 0


@pytest.mark.parametrize("query", ["?from=yesterday", f"?from={FROM}&to=soon", "?to=12:00"])
def test_summary_refuses_an_unreadable_bound(fresh_processors, query):
    reply = fresh_processors.default.admin("GET", f"/admin/payments-summary{query}")
    assert reply.status == 400


def test_summary_fee_is_the_processors_own(fresh_processors):
    fallback = fresh_processors.fallback
    fallback.pay(amount=20.05)
    fallback.pay(amount=20.05)
    summary = exact_summary(fallback)
    assert summary["feePerTransaction"] == Decimal("0.10")
    assert summary["totalAmount"] == Decimal("40.10")
    assert summary["totalFee"] == Decimal("4.0100")
    empty = exact_summary(fresh_processors.default)
    assert empty["totalRequests"] == 0
    assert empty["totalAmount"] == empty["totalFee"] == 0


def test_payments_in_flight_are_counted(processor_factory):
    # The emulator's own route: a test sees a payment reach the processor during its delay.
    processor = processor_factory()
    processor.set_delay(500)
    sending = threading.Thread(target=processor.pay)
    sending.start()
    deadline = time.monotonic() + 5
    while processor.in_flight() != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sending.join()
    assert processor.in_flight() == 0
