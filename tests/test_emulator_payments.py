"""The emulated processor's payment routes (SPEC.md §3): POST /payments, GET /payments/{id}."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from rinha.clock import parse_us
from tests.support.processes import Reply, call
from tests.support.wire import pipelined

REQUESTED_AT = "2025-07-15T12:34:56.000Z"


def payment_body(**fields: Any) -> dict[str, Any]:
    body = {"correlationId": str(uuid.uuid4()), "amount": 19.90, "requestedAt": REQUESTED_AT}
    body.update(fields)
    return body


def post_request(body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )


def eventually(probe: Callable[[], Reply], status: int, timeout: float = 5.0) -> Reply:
    """Repeat `probe` until it answers `status`."""
    deadline = time.monotonic() + timeout
    while True:
        reply = probe()
        if reply.status == status or time.monotonic() > deadline:
            return reply
        time.sleep(0.02)


def test_payment_is_answered_after_the_delay_and_stored(fresh_processors):
    processor = fresh_processors.default
    processor.set_delay(150)
    correlation_id = str(uuid.uuid4())
    started = time.monotonic()
    reply = processor.pay(correlation_id, 19.90, "2025-07-15T12:34:56.1615Z")
    assert time.monotonic() - started >= 0.15
    assert reply.status == 200
    assert reply.json() == {"message": "payment processed successfully"}
    stored = call(processor.port, "GET", f"/payments/{correlation_id}")
    assert stored.status == 200
    assert stored.json()["correlationId"] == correlation_id
    assert processor.summary()["totalRequests"] == 1


def test_failure_answers_500_after_the_delay_and_stores_nothing(fresh_processors):
    processor = fresh_processors.default
    processor.set_failure(True)
    processor.set_delay(100)
    correlation_id = str(uuid.uuid4())
    started = time.monotonic()
    reply = processor.pay(correlation_id)
    assert time.monotonic() - started >= 0.1
    assert reply.status == 500
    assert call(processor.port, "GET", f"/payments/{correlation_id}").status == 404
    assert processor.summary()["totalRequests"] == 0


def test_duplicate_correlation_id_is_422_and_stored_once(fresh_processors):
    processor = fresh_processors.default
    correlation_id = str(uuid.uuid4())
    assert processor.pay(correlation_id).status == 200
    assert processor.pay(correlation_id).status == 422
    assert processor.pay(correlation_id.upper()).status == 422  # the same UUID
    assert processor.summary()["totalRequests"] == 1


# (amount as sent in the JSON text, amount as stored)
ROUNDING_CASES = [
    ("20.05", "20.05"),
    ("2.675", "2.68"),
    ("2.665", "2.66"),
    ("0.125", "0.12"),
    ("0.135", "0.14"),
    ("1.005", "1.00"),
    ("19.999", "20.00"),
    ("20", "20.00"),
    ("1e1", "10.00"),
]


@pytest.mark.parametrize(("sent", "stored"), ROUNDING_CASES)
def test_amount_is_stored_rounded_half_to_even(fresh_processors, sent, stored):
    processor = fresh_processors.default
    correlation_id = str(uuid.uuid4())
    body = b'{"correlationId":"%s","amount":%s,"requestedAt":"%s"}' % (
        correlation_id.encode(),
        sent.encode(),
        REQUESTED_AT.encode(),
    )
    reply = call(processor.port, "POST", "/payments", body, {"Content-Type": "application/json"})
    assert reply.status == 200
    answer = call(processor.port, "GET", f"/payments/{correlation_id}")
    assert b'"amount":%s,' % stored.encode() in answer.body
    summary = processor.admin("GET", "/admin/payments-summary")
    assert b'"totalAmount":%s,' % stored.encode() in summary.body


def test_caller_hanging_up_during_the_delay_does_not_stop_the_store(fresh_processors):
    processor = fresh_processors.default
    processor.set_delay(300)
    correlation_id = str(uuid.uuid4())
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", processor.port)) as sock:
        sock.sendall(post_request(payment_body(correlationId=correlation_id)))
    stored = eventually(lambda: call(processor.port, "GET", f"/payments/{correlation_id}"), 200)
    assert stored.status == 200
    assert time.monotonic() - started >= 0.3
    assert processor.summary()["totalRequests"] == 1


JSON = {"Content-Type": "application/json"}
VALID = json.dumps(payment_body()).encode()

# (headers, body, status): refused before the delay and before the failure switch.
BAD_REQUESTS = [
    ({}, VALID, 415),
    ({"Content-Type": "text/plain"}, VALID, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, VALID, 415),
    (JSON, b"", 400),
    (JSON, b"not json", 400),
    (JSON, b"[]", 400),
    (JSON, b'{"amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}', 400),
    (JSON, json.dumps({"correlationId": str(uuid.uuid4()), "amount": 19.9}).encode(), 400),
    (
        JSON,
        json.dumps({"correlationId": str(uuid.uuid4()), "requestedAt": REQUESTED_AT}).encode(),
        400,
    ),
    (JSON, json.dumps(payment_body(correlationId="abc")).encode(), 400),
    (JSON, json.dumps(payment_body(correlationId=123)).encode(), 400),
    (JSON, json.dumps(payment_body(amount="19.90")).encode(), 400),
    (JSON, json.dumps(payment_body(amount=True)).encode(), 400),
    (JSON, json.dumps(payment_body(amount=None)).encode(), 400),
    (JSON, json.dumps(payment_body(requestedAt="yesterday")).encode(), 400),
    (JSON, json.dumps(payment_body(requestedAt=1752582896)).encode(), 400),
]


@pytest.mark.parametrize(("headers", "body", "status"), BAD_REQUESTS)
def test_bad_request_is_refused_before_the_delay(fresh_processors, headers, body, status):
    processor = fresh_processors.default
    processor.set_delay(10_000)  # a check after the delay would time the call out
    processor.set_failure(True)  # a check after the failure switch would give 500
    reply = call(processor.port, "POST", "/payments", body, headers, timeout=5.0)
    assert reply.status == status
    processor.set_failure(False)
    assert processor.summary()["totalRequests"] == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"],
)
def test_json_media_type_variants_are_accepted(fresh_processors, content_type):
    body = json.dumps(payment_body()).encode()
    reply = call(
        fresh_processors.default.port, "POST", "/payments", body, {"Content-Type": content_type}
    )
    assert reply.status == 200


async def post_concurrently(url: str, count: int) -> list[tuple[int, float]]:
    """`count` payments at once on separate connections: (status, seconds to answer) each."""
    started = time.monotonic()

    async def post(session: aiohttp.ClientSession) -> tuple[int, float]:
        async with session.post(f"{url}/payments", json=payment_body()) as answer:
            await answer.read()
            return answer.status, time.monotonic() - started

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(post(session) for _ in range(count)))


def test_payments_beyond_in_flight_and_queue_get_429_at_once(processor_factory):
    processor = processor_factory(max_in_flight=2, max_queued=1)
    processor.set_delay(300)
    answers = asyncio.run(post_concurrently(processor.url, 5))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 200, 429, 429]
    refused = [elapsed for status, elapsed in answers if status == 429]
    processed = sorted(elapsed for status, elapsed in answers if status == 200)
    assert max(refused) < processed[0]  # refused while the others were still in their delay
    assert processed[-1] >= 0.6  # the queued one waited for a slot, then for its own delay
    assert processor.summary()["totalRequests"] == 3


def test_limit_holds_for_payments_read_in_one_go(processor_factory):
    processor = processor_factory(max_in_flight=1, max_queued=1)
    processor.set_delay(50)
    requests = [post_request(payment_body()) for _ in range(4)]
    assert pipelined(processor.port, requests) == [200, 200, 429, 429]


def test_payment_by_id(fresh_processors):
    processor = fresh_processors.default
    correlation_id = str(uuid.uuid4())
    processor.pay(correlation_id, 20.05, "2025-07-15T12:34:19.1615Z")
    reply = call(processor.port, "GET", f"/payments/{correlation_id}")
    assert reply.status == 200
    payment = reply.json()
    assert payment["correlationId"] == correlation_id
    assert payment["amount"] == 20.05
    assert parse_us(payment["requestedAt"]) == parse_us("2025-07-15T12:34:19.1615Z")
    assert call(processor.port, "GET", f"/payments/{correlation_id.upper()}").status == 200
    assert call(processor.port, "GET", f"/payments/{uuid.uuid4()}").status == 404
    assert call(processor.port, "GET", "/payments/not-a-uuid").status == 400


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/payments-summary", 404),
        ("GET", "/payments/a/b", 404),
        ("GET", "/admin/unknown", 404),
        ("GET", "/payments", 405),
        ("POST", "/payments/service-health", 405),
        ("DELETE", f"/payments/{uuid.uuid4()}", 405),
        ("GET", "/admin/purge-payments", 405),
        ("POST", "/admin/configurations/delay", 405),
    ],
)
def test_unknown_path_is_404_and_wrong_method_405(processors, method, path, status):
    reply = call(processors.default.port, method, path)
    assert reply.status == status
    if status == 405:
        assert reply.headers["allow"]
