"""The three public routes (SPEC.md §2) and a readiness check: a dispatcher takes accepted payments to the
processors, and a cluster answers for every replica (rinha/cluster/).

Public: anything else is 404; a known path with another method is 405. Bad input is answered
with a 4xx and a short reason and changes nothing.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from rinha.clock import parse_us
from rinha.cluster import Cluster, ClusterUnavailable
from rinha.delivery import Dispatcher
from rinha.http import Answer, Request, response
from rinha.ledger import Summary
from rinha.payments import BadInput, format_cents, parse_payment

ACCEPTED = response(202)
# For the load balancer's checks: this replica's event loop is serving.
READY = response(204)
PURGED = response(200, b'{"message":"All payments purged."}')
BUFFER_FULL = response(429, b'{"error":"too many pending payments, retry later"}')
NOT_FOUND = response(404, b'{"error":"no such route"}')
METHOD_NOT_ALLOWED = response(405, b'{"error":"method not allowed"}')
JOURNAL_UNAVAILABLE = response(503, b'{"error":"cannot keep the payment now, retry later"}')
# The correlationId HAProxy hashed to choose this replica (haproxy/haproxy.cfg).
HASHED_ID_HEADER = b"x-hashed-correlation-id"
# Why a POST /payments was refused, as the metrics label it.
REFUSAL_REASONS = ("bad_input", "buffer_full", "journal_unavailable", "cluster_unavailable")


def bad_input(status: int, reason: str) -> bytes:
    return response(status, b'{"error":"%s"}' % reason.encode())


AMBIGUOUS_ID = bad_input(422, "correlationId must appear once, as a plain key")


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


def render_summary(summary: Summary) -> bytes:
    parts = [
        b'"%s":{"totalRequests":%d,"totalAmount":%s}'
        % (name.encode(), totals.count, format_cents(totals.cents))
        for name, totals in summary.items()
    ]
    return b"{" + b",".join(parts) + b"}"


class App:
    def __init__(self, dispatcher: Dispatcher, cluster: Cluster) -> None:
        self._dispatcher = dispatcher
        self._cluster = cluster
        # Read by the metrics at scrape time; plain ints, counted where the answer is chosen.
        self.accepted_count = 0
        self.refused_counts = dict.fromkeys(REFUSAL_REASONS, 0)

    def handle(self, request: Request) -> Answer:
        path, method = request.path, request.method
        if path == b"/payments":
            return self._accept(request) if method == b"POST" else METHOD_NOT_ALLOWED
        if path == b"/payments-summary":
            return self._summary(request.query) if method == b"GET" else METHOD_NOT_ALLOWED
        if path == b"/purge-payments":
            return self._purge() if method == b"POST" else METHOD_NOT_ALLOWED
        if path == b"/ready":
            return READY if method == b"GET" else METHOD_NOT_ALLOWED
        return NOT_FOUND

    def _accept(self, request: Request) -> bytes:
        try:
            payment = parse_payment(request.body)
        except BadInput as error:
            self.refused_counts["bad_input"] += 1
            return bad_input(error.status, error.reason)
        hashed = request.headers.get(HASHED_ID_HEADER)
        if hashed is not None and hashed != payment.correlation_id.encode():
            # The load balancer chose this replica by another reading of the body.
            self.refused_counts["bad_input"] += 1
            return AMBIGUOUS_ID
        if self._cluster.knows(payment.correlation_id):
            return ACCEPTED
        if self._dispatcher.full:
            self.refused_counts["buffer_full"] += 1
            return BUFFER_FULL
        # Kept before it is queued or answered: a 202 is never lost to a crash.
        try:
            self._cluster.accept(payment)
        except OSError:
            self.refused_counts["journal_unavailable"] += 1
            return JOURNAL_UNAVAILABLE
        except ClusterUnavailable as error:
            self.refused_counts["cluster_unavailable"] += 1
            return error.answer
        self._dispatcher.submit(payment)
        self.accepted_count += 1
        return ACCEPTED

    async def _summary(self, query: bytes) -> bytes:
        try:
            from_ms, to_ms = window_bounds(query)
        except BadInput as error:
            return bad_input(error.status, error.reason)
        try:
            totals = await self._cluster.summary(from_ms, to_ms)
        except ClusterUnavailable as error:
            return error.answer
        return response(200, render_summary(totals))

    async def _purge(self) -> bytes:
        try:
            await self._cluster.purge()
        except ClusterUnavailable as error:
            return error.answer
        return PURGED
