"""The three public routes (SPEC.md §2). Anything else is 404; a known path with another
method is 405. Bad input is answered with a 4xx and a short reason and changes nothing."""

from __future__ import annotations

from urllib.parse import parse_qsl

from rinha.clock import parse_us
from rinha.dispatcher import Dispatcher
from rinha.http import Answer, Request, response
from rinha.ledger import Ledger, Summary
from rinha.payments import BadInput, format_cents, parse_payment

ACCEPTED = response(202)
PURGED = response(200, b'{"message":"All payments purged."}')
BUFFER_FULL = response(429, b'{"error":"too many pending payments, retry later"}')
NOT_FOUND = response(404, b'{"error":"no such route"}')
METHOD_NOT_ALLOWED = response(405, b'{"error":"method not allowed"}')


def bad_input(status: int, reason: str) -> bytes:
    return response(status, b'{"error":"%s"}' % reason.encode())


def window_bounds(query: bytes) -> tuple[int | None, int | None]:
    """`from`/`to` as inclusive epoch milliseconds; a bound between two milliseconds is
    narrowed to the whole milliseconds inside the window."""
    bounds: dict[str, int] = {}
    for name, value in parse_qsl(query.decode("latin-1")):
        if name in ("from", "to"):
            try:
                micros = parse_us(value)
            except ValueError:
                raise BadInput(400, f"{name} must be an ISO-8601 timestamp") from None
            bounds[name] = -(-micros // 1000) if name == "from" else micros // 1000
    return bounds.get("from"), bounds.get("to")


def render_summary(summary: Summary, pending_count: int, pending_cents: int) -> bytes:
    parts = [
        b'"%s":{"totalRequests":%d,"totalAmount":%s}'
        % (name.encode(), totals.count, format_cents(totals.cents))
        for name, totals in summary.items()
    ]
    parts.append(
        b'"pending":{"totalRequests":%d,"totalAmount":%s}'
        % (pending_count, format_cents(pending_cents))
    )
    return b"{" + b",".join(parts) + b"}"


class App:
    def __init__(self, dispatcher: Dispatcher, ledger: Ledger) -> None:
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._accepted: set[str] = set()

    def handle(self, request: Request) -> Answer:
        path, method = request.path, request.method
        if path == b"/payments":
            return self._accept(request.body) if method == b"POST" else METHOD_NOT_ALLOWED
        if path == b"/payments-summary":
            return self._summary(request.query) if method == b"GET" else METHOD_NOT_ALLOWED
        if path == b"/purge-payments":
            return self._purge() if method == b"POST" else METHOD_NOT_ALLOWED
        return NOT_FOUND

    def _accept(self, body: bytes) -> bytes:
        try:
            payment = parse_payment(body)
        except BadInput as error:
            return bad_input(error.status, error.reason)
        if payment.correlation_id in self._accepted:
            return ACCEPTED
        if not self._dispatcher.submit(payment):
            return BUFFER_FULL
        self._accepted.add(payment.correlation_id)
        return ACCEPTED

    async def _summary(self, query: bytes) -> bytes:
        try:
            from_ms, to_ms = window_bounds(query)
        except BadInput as error:
            return bad_input(error.status, error.reason)
        summary = await self._ledger.summary(from_ms, to_ms)
        dispatcher = self._dispatcher
        return response(
            200, render_summary(summary, dispatcher.pending_count, dispatcher.pending_cents)
        )

    async def _purge(self) -> bytes:
        await self._ledger.purge()
        self._accepted.clear()
        return PURGED
