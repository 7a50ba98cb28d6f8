"""The emulated payment processor's routes and state (SPEC.md §3).

The official processor is an ASP.NET minimal API over PostgreSQL; this module answers the same
routes the same way, from memory. The order of a payment's checks is the official one: the
body is bound first (wrong media type 415, bad body 400, both at once); then the payment takes
a concurrency slot (429 if none and the queue is full), waits the configured delay, and only
then looks at the failure switch (500, nothing stored) and at duplicates (422). The work is a
task of its own, so a caller hanging up during the delay does not stop the store. With no
delay and a free slot the answer is computed inline, without a task.

Admin routes check `X-Rinha-Token` once the route and method are known (404 and 405 come
first, as the official endpoint filter runs only on a matched endpoint). Three admin routes are
the emulator's own, for tests: `PUT /admin/configurations/rejected-ids` names payments that are
answered 400 at once, stored never, whatever the processor's health (a poison payment);
`GET /admin/health-calls` counts the health calls answered and refused; `GET
/admin/payments-in-flight` counts the payments received and not answered yet.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

import orjson

from rinha.clock import parse_us
from rinha.emulator.admission import HealthWindow, PaymentSlots
from rinha.emulator.settings import EmulatorSettings
from rinha.emulator.table import PaymentTable, ProcessedPayment
from rinha.http import Answer, Request, response

PAYMENT_PROCESSED = response(200, b'{"message":"payment processed successfully"}')
PAYMENT_FAILED = response(500)  # the official failure answer has no body
TOO_MANY_PAYMENTS = response(429, b'{"error":"too many payments in progress"}')
PAYMENT_REJECTED = response(400, b'{"error":"this payment is rejected"}')
NOT_FOUND = response(404)
UNAUTHORIZED = response(401)
NO_CONTENT = response(204)
PURGED = response(200, b'{"message":"All payments purged."}')

_CENT = Decimal("0.01")
_INT32 = range(-(2**31), 2**31)
# The JSON body's correlationId must be a UUID in its 8-4-4-4-12 form (.NET reads a Guid
# from JSON in "D" format only); the route's {id} may be any form Python's UUID reads.
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_EPOCH = datetime(1970, 1, 1)
_PAYMENT_PREFIX = b"/payments/"
_DUPLICATE = "Payment could not be processed. CorrelationId already exists: %s."


class RequestError(Exception):
    """Bad input: answered with `status` and a short reason, before any delay."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def answer(self) -> bytes:
        return response(self.status, orjson.dumps({"error": self.reason}))


class Processor:
    def __init__(self, options: EmulatorSettings) -> None:
        self.fee = options.fee
        self.token = options.token.encode()
        self.delay_ms = 0
        self.failing = False
        # Payments this processor rejects, whatever its health: poison payments, for tests.
        self.rejected_ids: frozenset[str] = frozenset()
        self.payments = PaymentTable()
        self.slots = PaymentSlots(options.max_in_flight, options.max_queued)
        self.health = HealthWindow(options.rate_limit_seconds)
        # Health calls answered and refused, for tests of the callers' discipline.
        self.health_answered = 0
        self.health_refused = 0

    def handle(self, request: Request) -> Answer:
        """The `rinha.http` handler: route by path, then method, then token for /admin."""
        methods = _ROUTES.get(request.path)
        if methods is None:
            rest = request.path[len(_PAYMENT_PREFIX) :]
            if not request.path.startswith(_PAYMENT_PREFIX) or not rest or b"/" in rest:
                return NOT_FOUND
            methods = _PAYMENT_BY_ID
        route = methods.get(request.method)
        if route is None:
            return _NOT_ALLOWED[id(methods)]
        token = request.headers.get(b"x-rinha-token")
        if request.path.startswith(b"/admin/") and token != self.token:
            return UNAUTHORIZED
        try:
            return route(self, request)
        except RequestError as error:
            return error.answer()

    # POST /payments

    def post_payment(self, request: Request) -> Answer:
        payment = _read_payment(request)
        if payment.correlation_id in self.rejected_ids:
            return PAYMENT_REJECTED
        if self.slots.try_acquire():
            if self.delay_ms <= 0:
                try:
                    return self._settle(payment)
                finally:
                    self.slots.release()
            return self._process(payment, None)
        if self.slots.queue_full:
            return TOO_MANY_PAYMENTS
        # Queued now, not when the task first runs: the next request may be read before that.
        return self._process(payment, self.slots.queue())

    async def _process(
        self, payment: ProcessedPayment, slot: asyncio.Future[None] | None
    ) -> bytes:
        """Settle the payment once it holds a slot (`slot` is its place in the queue, if any)."""
        if slot is not None:
            await slot
        try:
            await _sleep_at_least(self.delay_ms / 1000)
            return self._settle(payment)
        finally:
            self.slots.release()

    def _settle(self, payment: ProcessedPayment) -> bytes:
        if self.failing:
            return PAYMENT_FAILED
        if not self.payments.add(payment):
            return response(422, orjson.dumps({"message": _DUPLICATE % payment.correlation_id}))
        return PAYMENT_PROCESSED

    # GET /payments/service-health

    def get_health(self, request: Request) -> Answer:
        if self.health.try_take():
            return self._health_answer()
        if self.health.queue_full:
            self.health_refused += 1
            return response(
                429,
                b"Too many requests; try again later.",
                content_type=b"text/plain; charset=utf-8",
                headers=b"retry-after: %d\r\n" % self.health.retry_after(),
            )
        return self._wait_health(self.health.queue())  # queued now, as a payment is

    async def _wait_health(self, permit: asyncio.Future[None]) -> bytes:
        await permit
        return self._health_answer()

    def _health_answer(self) -> bytes:
        self.health_answered += 1
        body = orjson.dumps({"failing": self.failing, "minResponseTime": self.delay_ms})
        return response(200, body)

    # GET /payments/{id}

    def get_payment(self, request: Request) -> Answer:
        try:
            correlation_id = str(uuid.UUID(request.path[len(_PAYMENT_PREFIX) :].decode()))
        except ValueError:  # UnicodeDecodeError is one
            raise RequestError(400, "id must be a UUID") from None
        payment = self.payments.get(correlation_id)
        if payment is None:
            return NOT_FOUND
        body = b'{"correlationId":"%s","amount":%s,"requestedAt":"%s"}' % (
            payment.correlation_id.encode(),
            format_cents(payment.cents).encode(),
            format_requested_at(payment.requested_us).encode(),
        )
        return response(200, body)

    # /admin

    def get_summary(self, request: Request) -> Answer:
        query = parse_qs(request.query.decode("latin-1"))
        low, high = _query_time(query, "from"), _query_time(query, "to")
        # As the official processor: a window missing either bound covers every payment.
        if low is None or high is None:
            low = high = None
        count, cents = self.payments.summary(low, high)
        total_fee = Decimal(cents).scaleb(-2) * self.fee
        body = b'{"totalAmount":%s,"totalRequests":%d,"totalFee":%s,"feePerTransaction":%s}' % (
            format_cents(cents).encode(),
            count,
            format(total_fee, "f").encode(),
            format(self.fee, "f").encode(),
        )
        return response(200, body)

    def put_token(self, request: Request) -> Answer:
        token = _read_json(request).get("token")
        if not isinstance(token, str):
            raise RequestError(400, "token must be a string")
        self.token = token.encode()
        return NO_CONTENT

    def put_delay(self, request: Request) -> Answer:
        delay = _read_json(request).get("delay")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay not in _INT32:
            raise RequestError(400, "delay must be an integer of milliseconds")
        was, self.delay_ms = self.delay_ms, delay
        return response(200, orjson.dumps({"config": "delay", "was": was, "is": delay}))

    def put_failure(self, request: Request) -> Answer:
        failure = _read_json(request).get("failure")
        if not isinstance(failure, bool):
            raise RequestError(400, "failure must be true or false")
        was, self.failing = self.failing, failure
        return response(200, orjson.dumps({"config": "failure", "was": was, "is": failure}))

    def put_rejected_ids(self, request: Request) -> Answer:
        ids = _read_json(request).get("correlationIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RequestError(400, "correlationIds must be a list of strings")
        self.rejected_ids = frozenset(i.lower() for i in ids)
        return NO_CONTENT

    def get_health_calls(self, request: Request) -> Answer:
        counts = {"answered": self.health_answered, "refused": self.health_refused}
        return response(200, orjson.dumps(counts))

    def get_payments_in_flight(self, request: Request) -> Answer:
        counts = {"inFlight": self.slots.in_flight, "queued": self.slots.queued}
        return response(200, orjson.dumps(counts))

    def post_purge(self, request: Request) -> Answer:
        self.payments.purge()
        return PURGED


Route = Callable[[Processor, Request], Answer]

_ROUTES: dict[bytes, dict[bytes, Route]] = {
    b"/payments": {b"POST": Processor.post_payment},
    b"/payments/service-health": {b"GET": Processor.get_health},
    b"/admin/payments-summary": {b"GET": Processor.get_summary},
    b"/admin/configurations/token": {b"PUT": Processor.put_token},
    b"/admin/configurations/delay": {b"PUT": Processor.put_delay},
    b"/admin/configurations/failure": {b"PUT": Processor.put_failure},
    b"/admin/configurations/rejected-ids": {b"PUT": Processor.put_rejected_ids},
    b"/admin/purge-payments": {b"POST": Processor.post_purge},
    b"/admin/health-calls": {b"GET": Processor.get_health_calls},
    b"/admin/payments-in-flight": {b"GET": Processor.get_payments_in_flight},
}
_PAYMENT_BY_ID: dict[bytes, Route] = {b"GET": Processor.get_payment}
# 405 answers, one per route, keyed by the identity of the route's method table.
_NOT_ALLOWED = {
    id(methods): response(405, headers=b"allow: %s\r\n" % b", ".join(methods))
    for methods in [*_ROUTES.values(), _PAYMENT_BY_ID]
}


async def _sleep_at_least(seconds: float) -> None:
    """Sleep no less than `seconds`: uvloop's timers run on libuv's cached, millisecond clock
    and may fire up to a millisecond early, and no answer may beat `minResponseTime`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)


# Reading requests


def _read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 415 unless the media type is JSON, 400 unless an object."""
    media_type = request.headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
    if media_type != b"application/json" and not (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    ):
        raise RequestError(415, "content-type must be application/json")
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise RequestError(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body must be a JSON object")
    return data


def _read_payment(request: Request) -> ProcessedPayment:
    data = _read_json(request)
    correlation_id = data.get("correlationId")
    if not isinstance(correlation_id, str) or not _UUID_TEXT.fullmatch(correlation_id):
        raise RequestError(400, "correlationId must be a UUID")
    requested_at = data.get("requestedAt")
    if not isinstance(requested_at, str):
        raise RequestError(400, "requestedAt must be an ISO-8601 timestamp")
    try:
        requested_us = parse_us(requested_at)
    except ValueError:
        raise RequestError(400, "requestedAt must be an ISO-8601 timestamp") from None
    return ProcessedPayment(correlation_id.lower(), to_cents(data.get("amount")), requested_us)


def to_cents(amount: object) -> int:
    """A JSON number as cents, rounded half-to-even as .NET's `decimal.Round(amount, 2)`.

    orjson hands over a float; its shortest repr is the decimal text that was sent (for any
    amount of up to 15 significant digits), so the rounding sees the exact decimal value.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise RequestError(400, "amount must be a number")
    try:
        exact = Decimal(amount) if isinstance(amount, int) else Decimal(repr(amount))
        return int(exact.quantize(_CENT, rounding=ROUND_HALF_EVEN).scaleb(2))
    except InvalidOperation:
        raise RequestError(400, "amount out of range") from None


def _query_time(query: dict[str, list[str]], name: str) -> int | None:
    """A summary bound in epoch microseconds; None when absent or empty, 400 when unreadable."""
    text = query.get(name, [""])[0]
    if not text:
        return None
    try:
        return parse_us(text)
    except ValueError:
        raise RequestError(400, f"{name} must be an ISO-8601 timestamp") from None


# Rendering


def format_cents(cents: int) -> str:
    whole, part = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{whole}.{part:02d}"


def format_requested_at(requested_us: int) -> str:
    """As the official answers it: no offset (PostgreSQL `timestamp`), fraction without
    trailing zeros, none at all on a whole second."""
    moment = _EPOCH + timedelta(microseconds=requested_us)
    text = moment.isoformat(timespec="seconds")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text
