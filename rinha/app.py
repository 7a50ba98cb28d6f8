"""The three public routes (SPEC.md §2), and the control routes peers use on a private socket.

Public: anything else is 404; a known path with another method is 405. Bad input is answered
with a 4xx and a short reason and changes nothing.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from rinha.clock import parse_us
from rinha.cluster import (
    HEALTH_PATH,
    PURGE_PATH,
    SUMMARY_PATH,
    PeerUnavailable,
    Peers,
    decode_health,
    encode_totals,
)
from rinha.dispatcher import Dispatcher
from rinha.http import Answer, Request, response
from rinha.ledger import Ledger, Summary, Totals
from rinha.payments import BadInput, format_cents, parse_payment

ACCEPTED = response(202)
PURGED = response(200, b'{"message":"All payments purged."}')
OK = response(200, b"{}")
BUFFER_FULL = response(429, b'{"error":"too many pending payments, retry later"}')
NOT_FOUND = response(404, b'{"error":"no such route"}')
METHOD_NOT_ALLOWED = response(405, b'{"error":"method not allowed"}')
PEER_UNAVAILABLE = response(503, b'{"error":"a replica did not answer; totals unknown"}')


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


def render_summary(summary: Summary) -> bytes:
    parts = [
        b'"%s":{"totalRequests":%d,"totalAmount":%s}'
        % (name.encode(), totals.count, format_cents(totals.cents))
        for name, totals in summary.items()
    ]
    return b"{" + b",".join(parts) + b"}"


class App:
    def __init__(self, dispatcher: Dispatcher, ledger: Ledger, peers: Peers | None) -> None:
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._peers = peers
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

    def handle_control(self, request: Request) -> Answer:
        path = request.path.decode("latin-1")
        if path == SUMMARY_PATH:
            return self._local_summary(request.query)
        if path == PURGE_PATH:
            return self._local_purge()
        if path == HEALTH_PATH:
            for name, report in decode_health(request.body).items():
                self._dispatcher.apply_health(name, report)
            return OK
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

    async def _totals(self, from_ms: int | None, to_ms: int | None) -> Summary:
        """This replica's ledger over the window, and what it still has pending."""
        totals = await self._ledger.summary(from_ms, to_ms)
        dispatcher = self._dispatcher
        totals["pending"] = Totals(dispatcher.pending_count, dispatcher.pending_cents)
        return totals

    async def _summary(self, query: bytes) -> bytes:
        try:
            from_ms, to_ms = window_bounds(query)
        except BadInput as error:
            return bad_input(error.status, error.reason)
        totals = await self._totals(from_ms, to_ms)
        if self._peers is not None:
            try:
                for peer_totals in await self._peers.totals(query):
                    for name, peer in peer_totals.items():
                        totals[name] = totals[name] + peer
            except PeerUnavailable:
                return PEER_UNAVAILABLE
        return response(200, render_summary(totals))

    async def _local_summary(self, query: bytes) -> bytes:
        return response(200, encode_totals(await self._totals(*window_bounds(query))))

    async def _purge(self) -> bytes:
        if self._peers is not None:
            try:
                await self._peers.purge()
            except PeerUnavailable:
                return PEER_UNAVAILABLE
        return await self._local_purge()

    async def _local_purge(self) -> bytes:
        await self._ledger.purge()
        self._accepted.clear()
        return PURGED
