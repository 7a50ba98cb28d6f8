"""`POST /payments` end to end: accepted payments reach a processor exactly once, bad input is
refused with a reason and changes nothing, a full buffer answers 429 (SPEC.md §2)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.clients import Service
from tests.support.processes import call

UUID = str(uuid.uuid4())


def test_accepted_payment_is_processed_by_the_default(
    service: Service, fresh_processors: Any
) -> None:
    reply = service.pay(amount=19.90)
    assert reply.status == 202
    assert reply.body == b""
    summary = service.wait_settled()
    assert summary["default"] == {"totalRequests": 1, "totalAmount": 19.9}
    assert fresh_processors.stored() == (1, 0)
    assert fresh_processors.default.summary()["totalAmount"] == 19.9


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{", 400),
        (b'"just a string"', 400),
        (b'{"correlationId":"not-a-uuid","amount":19.90}', 422),
        (b'{"correlationId":"%s"}' % UUID.encode(), 422),
        (b'{"correlationId":"%s","amount":-19.90}' % UUID.encode(), 422),
        (b'{"correlationId":"%s","amount":0}' % UUID.encode(), 422),
        (b'{"correlationId":"%s","amount":19.999}' % UUID.encode(), 422),
        (b'{"correlationId":"%s","amount":"19.90"}' % UUID.encode(), 422),
        (b'{"correlationId":"%s","amount":1e400}' % UUID.encode(), 400),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    service: Service, fresh_processors: Any, body: bytes, status: int
) -> None:
    reply = call(service.port, "POST", "/payments", body, {"Content-Type": "application/json"})
    assert reply.status == status
    assert reply.json()["error"]
    # The connection stays usable: bad input is not bad framing.
    assert "connection" not in reply.headers or reply.headers["connection"] != "close"
    summary = service.summary()
    assert summary["pending"]["totalRequests"] == 0
    assert summary["default"]["totalRequests"] == 0
    assert fresh_processors.stored() == (0, 0)


def test_a_replayed_correlation_id_is_charged_once(
    service: Service, fresh_processors: Any
) -> None:
    correlation_id = str(uuid.uuid4())
    assert service.pay(correlation_id).status == 202
    assert service.pay(correlation_id).status == 202
    assert service.pay(correlation_id.upper()).status == 202
    service.wait_settled()
    assert service.pay(correlation_id).status == 202
    summary = service.wait_settled()
    assert summary["default"]["totalRequests"] == 1
    assert fresh_processors.stored() == (1, 0)


def test_full_buffer_answers_429_and_loses_nothing_accepted(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    fresh_processors.default.set_failure(True)
    fresh_processors.fallback.set_failure(True)
    service = service_factory("--buffer-capacity", "2", "--max-hold", "0")
    statuses = [service.pay().status for _ in range(6)]
    assert statuses.count(429) >= 3
    accepted = statuses.count(202)
    assert set(statuses) == {202, 429}
    assert service.summary()["pending"]["totalRequests"] == accepted
    fresh_processors.fallback.set_failure(False)
    summary = service.wait_settled()
    assert summary["default"]["totalRequests"] + summary["fallback"]["totalRequests"] == accepted
    assert sum(fresh_processors.stored()) == accepted


def test_pending_payments_are_visible_until_processed(
    service: Service, fresh_processors: Any
) -> None:
    fresh_processors.default.set_failure(True)
    fresh_processors.fallback.set_failure(True)
    for _ in range(3):
        assert service.pay(amount=10.01).status == 202
    summary = service.summary()
    assert summary["pending"] == {"totalRequests": 3, "totalAmount": 30.03}
    fresh_processors.default.set_failure(False)
    summary = service.wait_settled()
    assert summary["default"] == {"totalRequests": 3, "totalAmount": 30.03}
    assert fresh_processors.stored() == (3, 0)
