"""The three public routes (SPEC.md §2), and the control routes peers use on a private socket.

A replica is alone, one of a host's cluster (peers, rinha/cluster.py), or one of any number that
share a store (rinha/store.py); the routes are the same.

Public: anything else is 404; a known path with another method is 405. Bad input is answered
with a 4xx and a short reason and changes nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from rinha.clock import parse_us
from rinha.cluster import HEALTH_PATH, PURGE_PATH, Peers, PeerUnavailable, decode_health
from rinha.dispatcher import Dispatcher
from rinha.http import Answer, Request, response
from rinha.journal import Journal, NoJournal
from rinha.ledger import Ledger, LedgerUnavailable, Summary, Totals
from rinha.payments import BadInput, format_cents, parse_payment

if TYPE_CHECKING:  # the store's modules load pymongo: only a replica with a store needs them
    from rinha.store import Store

ACCEPTED = response(202)
PURGED = response(200, b'{"message":"All payments purged."}')
OK = response(200, b"{}")
BUFFER_FULL = response(429, b'{"error":"too many pending payments, retry later"}')
NOT_FOUND = response(404, b'{"error":"no such route"}')
METHOD_NOT_ALLOWED = response(405, b'{"error":"method not allowed"}')
PEER_UNREADABLE = response(503, b'{"error":"a replica\'s journal cannot be read; totals unknown"}')
PURGE_INCOMPLETE = response(503, b'{"error":"a running replica did not answer; purge again"}')
JOURNAL_UNAVAILABLE = response(503, b'{"error":"cannot keep the payment now, retry later"}')
LEDGER_UNAVAILABLE = response(503, b'{"error":"the ledger store did not answer; totals unknown"}')
# Why a POST /payments was refused, as the metrics label it.
REFUSAL_REASONS = ("bad_input", "buffer_full", "journal_unavailable")


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
    def __init__(
        self,
        dispatcher: Dispatcher,
        ledger: Ledger,
        journal: Journal | NoJournal,
        accepted: set[str],
        *,
        peers: Peers | None = None,
        store: Store | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._journal = journal
        self._peers = peers
        self._store = store
        self._accepted = accepted
        # Read by the metrics at scrape time; plain ints, counted where the answer is chosen.
        self.accepted_count = 0
        self.refused_counts = dict.fromkeys(REFUSAL_REASONS, 0)

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
        path, method = request.path.decode("latin-1"), request.method
        if path == PURGE_PATH:
            return self._local_purge() if method == b"POST" else METHOD_NOT_ALLOWED
        if path == HEALTH_PATH:
            if method != b"PUT":
                return METHOD_NOT_ALLOWED
            for name, report in decode_health(request.body).items():
                self._dispatcher.apply_health(name, report)
            return OK
        return NOT_FOUND

    def _accept(self, body: bytes) -> bytes:
        try:
            payment = parse_payment(body)
        except BadInput as error:
            self.refused_counts["bad_input"] += 1
            return bad_input(error.status, error.reason)
        if payment.correlation_id in self._accepted:
            return ACCEPTED
        if self._dispatcher.full:
            self.refused_counts["buffer_full"] += 1
            return BUFFER_FULL
        # Journaled before it is queued or answered: a 202 is never lost to a crash.
        try:
            self._journal.accepted(payment)
        except OSError:
            self.refused_counts["journal_unavailable"] += 1
            return JOURNAL_UNAVAILABLE
        if self._store is not None:
            self._store.claim(payment)
        self._dispatcher.submit(payment)
        self._accepted.add(payment.correlation_id)
        self.accepted_count += 1
        return ACCEPTED

    async def _summary(self, query: bytes) -> bytes:
        try:
            from_ms, to_ms = window_bounds(query)
        except BadInput as error:
            return bad_input(error.status, error.reason)
        dispatcher = self._dispatcher
        try:
            if self._store is not None:
                totals = await self._store.summary(from_ms, to_ms)
            else:
                totals = await self._ledger.summary(from_ms, to_ms)
                totals["pending"] = Totals(dispatcher.pending_count, dispatcher.pending_cents)
            if self._peers is not None:
                for name, part in (await self._peers.totals(from_ms, to_ms)).items():
                    totals[name] = totals[name] + part
        except PeerUnavailable:
            return PEER_UNREADABLE
        except LedgerUnavailable:
            return LEDGER_UNAVAILABLE
        return response(200, render_summary(totals))

    async def _purge(self) -> bytes:
        if self._store is not None:
            try:
                await self._store.purge()
            except LedgerUnavailable:
                return LEDGER_UNAVAILABLE
            return PURGED
        complete = True
        if self._peers is not None:
            try:
                await self._peers.purge()
            except PeerUnavailable:
                complete = False
        try:
            self._forget()
        except OSError:
            return PURGE_INCOMPLETE
        return PURGED if complete else PURGE_INCOMPLETE

    def _local_purge(self) -> bytes:
        """A peer's purge."""
        try:
            self._forget()
        except OSError:
            return PURGE_INCOMPLETE
        return PURGED

    def _forget(self) -> None:
        """Everything accepted before now, at once (no await): the journal first, so that
        a restart forgets it too."""
        self._journal.purged()
        self._dispatcher.purge(math.inf)
        self._ledger.forget()
        self._accepted.clear()
