"""The delivery of one payment: from the slot the scheduler gave it until it is recorded, known
not stored, or set aside (SPEC.md §3).

A delivery is a small state machine. Its events are the `Outcome` of an attempt (the first
send, or a re-send of the identical body) and what a lookup (`GET /payments/{id}`) says; every
move is in `TRANSITIONS` below, and an event missing there is our bug. Its states:

- FRESH: no attempt of ours may be stored anywhere. Its one attempt goes where the scheduler
  chose, stamped with a requestedAt (below). Should the send window close, or anything fail,
  before the attempt leaves, the delivery ends here and the payment waits in line again.
- UNSETTLED: an attempt went unanswered (timeout, reset) and may have been stored. The payment
  stays on that processor, looked up and re-sent with the identical body until one of them
  settles it: found means stored as the lookup shows it, a 200 stored as sent (a 422 only says
  "stored": the next lookup says how). Re-sends leave only while the send window is open: past
  a lease, a replica taking this one over may send it.
- STORED: a fresh attempt was answered 422: the processor has a payment with this id, and the
  lookup says with which requestedAt: none of ours, since no attempt of ours could still
  be stored.
- ADOPTED: taken over from a replica that died, which may have sent it to either processor:
  looked up on both, never sent.

It ends in one of:
- CONFIRMED: recorded, with exactly the processor and requestedAt that were sent, or that the
  lookup found: for an attempt of ours, the requestedAt it sent. Nothing else is ever recorded.
- DROPPED: the lookup found the id stored with a requestedAt this replica never sent: another
  replica accepted it too (sent to each straight, say) and records it. Charged once, it must
  count once: this copy is journaled as another's and dropped.
- REFUSED: the attempt stored nothing and the processor is not taking payments (500, 429,
  connection refused): the payment is routed again, maybe elsewhere.
- REJECTED: the attempt stored nothing, and the processor refused this one payment (another
  4xx), which says nothing of its health: the payment is set aside. Only a processor that
  rejects two payments in a row, with no confirmation between, is refusing: it is rejecting
  everything.
- RELEASED: the lookup says "not stored" and no attempt that could still be stored is left:
  routed again. That is at once after a 422, and otherwise only `settle_after` seconds after
  the last unanswered attempt (or after an adopted payment was taken over), longer than a
  processor can hold a request.

Each step does what its event says beyond the move: a 200 or a payment found is recorded; an
unanswered attempt restarts the settle time; a refusal marks the processor failing, and a
fresh attempt's 200 working; leaving a processor unstored is journaled (an adopted payment's
release is journaled as accepted here: from then on it is this replica's). Lookups and
re-sends repeat with a back-off. Should anything unforeseen fail on the way (the journal's
disk, say), the delivery logs it and, after a pause, takes the same payment up again: settled
where an attempt may have left, never sent anywhere else meanwhile.

requestedAt is the send time plus the processor's announced delay plus `stamp_ahead_ms`. The
test's audit compares windows ending 2 s (or 1.5 s) before now, reading the processors' and
our summaries at once; a payment the processor stores after its requestedAt has entered such a
window can be counted there before our record of it exists. A processor stores a payment only
after its delay (SPEC.md §3), even one that arrived while it was failing and was fixed during
the wait, so the stamp is pushed past the delay, plus a margin for a delay raised since the
last health report (docs/design.md: the final's worst such rise leaves 203 ms with the
default 100).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from typing import Any

from rinha.clock import format_ms, now_ms
from rinha.config import DispatchSettings
from rinha.delivery.scheduler import Scheduler
from rinha.health import ProcessorHealth
from rinha.journal import Journal, NoJournal
from rinha.ledger import Ledger
from rinha.payments import Payment
from rinha.processor_client import Outcome, ProcessorClient, StoredPayment


class State(enum.Enum):
    FRESH = "fresh"
    UNSETTLED = "unsettled"
    STORED = "stored"
    ADOPTED = "adopted"
    CONFIRMED = "confirmed"
    DROPPED = "dropped"
    REFUSED = "refused"
    REJECTED = "rejected"
    RELEASED = "released"


class Lookup(enum.Enum):
    FOUND = "found"  # a processor asked has it, as this replica sent it or adopted it
    ANOTHERS = "another's"  # stored with a requestedAt this replica never sent
    NOT_STORED = "not stored"  # none asked has it, and no attempt of ours can still reach one
    UNSURE = "unsure"  # a processor could not say, or an attempt may still be stored


TRANSITIONS: dict[State, dict[Outcome | Lookup, State]] = {
    State.FRESH: {
        Outcome.CONFIRMED: State.CONFIRMED,
        Outcome.DUPLICATE: State.STORED,
        Outcome.REFUSED: State.REFUSED,
        Outcome.REJECTED: State.REJECTED,
        Outcome.UNKNOWN: State.UNSETTLED,
    },
    State.UNSETTLED: {
        Lookup.FOUND: State.CONFIRMED,
        Lookup.ANOTHERS: State.DROPPED,
        Lookup.NOT_STORED: State.RELEASED,
        Lookup.UNSURE: State.UNSETTLED,
        # Answers to a re-send.
        Outcome.CONFIRMED: State.CONFIRMED,
        Outcome.DUPLICATE: State.UNSETTLED,
        Outcome.REFUSED: State.UNSETTLED,
        Outcome.REJECTED: State.UNSETTLED,
        Outcome.UNKNOWN: State.UNSETTLED,
    },
    State.STORED: {
        Lookup.FOUND: State.CONFIRMED,
        Lookup.ANOTHERS: State.DROPPED,
        Lookup.NOT_STORED: State.RELEASED,
        Lookup.UNSURE: State.STORED,
    },
    State.ADOPTED: {
        Lookup.FOUND: State.CONFIRMED,
        Lookup.NOT_STORED: State.RELEASED,
        Lookup.UNSURE: State.ADOPTED,
    },
}
ENDS = frozenset({State.CONFIRMED, State.DROPPED, State.REFUSED, State.REJECTED, State.RELEASED})

# Lookups and re-sends wait this long at first, doubling up to the most.
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
# A delivery that failed unexpectedly waits this long before taking its payment up again.
_AFTER_ERROR = 1.0

log = logging.getLogger("rinha")


class ProcessorCounts:
    """What the dispatcher did with one processor since start. Plain ints, counted where each
    event already happens; the metrics read them at scrape time."""

    __slots__ = (
        "confirmed",
        "confirmed_cents",
        "health_reports",
        "settled_not_stored",
        "settled_stored",
        "settling",
    )

    def __init__(self) -> None:
        self.confirmed = 0
        self.confirmed_cents = 0
        self.health_reports = 0
        self.settling = 0  # payments now being settled (a gauge)
        self.settled_stored = 0
        self.settled_not_stored = 0


class SettleProtocol:
    """Runs deliveries, one task per payment, over the processors' clients; records what they
    prove stored in the journal and the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        clients: dict[str, ProcessorClient],
        journal: Journal | NoJournal,
        settings: DispatchSettings,
        health: dict[str, ProcessorHealth],
        counts: dict[str, ProcessorCounts],
        scheduler: Scheduler,
    ) -> None:
        self._ledger = ledger
        self._clients = clients
        self._journal = journal
        self._settings = settings
        self._health = health
        self._counts = counts
        self._scheduler = scheduler  # whose send window attempts leave in
        self._loop = asyncio.get_running_loop()

    # `deliver`, `deliver_adopted` and `_send_fresh` hand back the coroutine that does their
    # work rather than await it: every await level is passed through again at each resumption
    # of a delivery's task, several per attempt.

    def deliver(self, payment: Payment, name: str, probe: bool) -> Coroutine[Any, Any, State]:
        """Carry a payment from the line on `name` (its own processor when it is unsettled)
        to an end, or FRESH when no attempt of it left."""
        state = State.FRESH if payment.unsettled_on is None else State.UNSETTLED
        return self._carry(payment, state, name, probe)

    def deliver_adopted(self, payment: Payment) -> Coroutine[Any, Any, State]:
        """Look a payment taken over up until it is CONFIRMED or RELEASED."""
        return self._carry(payment, State.ADOPTED, "", False)

    async def _carry(self, payment: Payment, state: State, name: str, probe: bool) -> State:
        while True:
            try:
                if state is State.FRESH:
                    state = await self._attempt(payment, name, probe)
                if state is State.UNSETTLED:
                    return await self._settle_counted(payment)
                if state is State.STORED or state is State.ADOPTED:
                    return await self._settle(payment, state)
                return state
            except Exception:
                log.exception("delivering %s failed; trying again", payment.correlation_id)
                await asyncio.sleep(_AFTER_ERROR)
                if state is not State.ADOPTED:
                    if payment.unsettled_on is None:
                        return State.FRESH  # no attempt may have left: back in line
                    state = State.UNSETTLED

    async def _attempt(self, payment: Payment, name: str, probe: bool) -> State:
        """The fresh attempt on `name`, unless the send window closed since the pass."""
        health = self._health[name]
        try:
            if self._loop.time() >= self._scheduler.send_until:  # the lease lapsed since the pass
                return State.FRESH
            outcome = await self._send_fresh(payment, name)
        finally:
            if probe:
                health.end_probe()
        if outcome is Outcome.REJECTED and health.rejects_everything(payment.correlation_id):
            outcome = Outcome.REFUSED  # a wrong URL or a proxy answering 4xx: fail over
        if outcome is Outcome.REFUSED or outcome is Outcome.REJECTED:
            self._release(payment, State.FRESH)
        self._answered(payment, name, outcome)
        if outcome is Outcome.CONFIRMED:
            health.confirmed(self._loop.time())
        return TRANSITIONS[State.FRESH][outcome]

    def _send_fresh(self, payment: Payment, name: str) -> Coroutine[Any, Any, Outcome]:
        """Stamp the payment, journal the attempt, and send it: from here on it may be stored
        on `name`."""
        requested_at = (
            now_ms() + self._health[name].min_response_ms + self._settings.stamp_ahead_ms
        )
        payment.requested_at_ms = requested_at
        payment.sent_stamps += (requested_at,)
        self._journal.sent(payment, name, requested_at)
        payment.unsettled_on = name
        payment.unsettled_since = self._loop.time()
        return self._clients[name].send(payment.body(format_ms(requested_at)))

    async def _settle_counted(self, payment: Payment) -> State:
        """`_settle` from UNSETTLED, counted for the metrics."""
        name = payment.unsettled_on
        assert name is not None
        counts = self._counts[name]
        counts.settling += 1
        try:
            end = await self._settle(payment, State.UNSETTLED)
        finally:
            counts.settling -= 1
        if end is State.CONFIRMED:
            counts.settled_stored += 1
        else:
            counts.settled_not_stored += 1
        return end

    async def _settle(self, payment: Payment, state: State) -> State:
        """Look the payment up, and re-send it while UNSETTLED and the send window is open,
        backing off between rounds, until it ends. The lookup comes first because it is not
        delayed like a payment; the re-send gets a lost attempt processed promptly."""
        backoff = _FIRST_BACKOFF
        while True:
            state = TRANSITIONS[state][await self._look_up(payment, state)]
            if state is State.UNSETTLED and self._loop.time() < self._scheduler.send_until:
                state = await self._resend(payment)
            if state in ENDS:
                return state
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _look_up(self, payment: Payment, state: State) -> Lookup:
        """Ask the processor the payment is on, or each one for an adopted payment (whose
        replica's attempts are unknown here). One that has it as this replica sent it, or
        adopted, is recorded as that processor has it; one released or another's is
        journaled."""
        adopted = state is State.ADOPTED
        names = list(self._clients) if adopted else [payment.unsettled_on]
        unsure = False
        for name in names:
            assert name is not None
            stored = await self._clients[name].lookup(payment.correlation_id)
            if isinstance(stored, StoredPayment):
                if not adopted and stored.requested_at_ms not in payment.sent_stamps:
                    self._journal.dropped(payment)
                    payment.unsettled_on = None
                    return Lookup.ANOTHERS
                self._record(payment, name, stored.requested_at_ms, stored.cents)
                return Lookup.FOUND
            unsure = unsure or stored is not None
        if unsure or self._may_still_be_stored(payment, state):
            return Lookup.UNSURE
        self._release(payment, state)
        return Lookup.NOT_STORED

    def _may_still_be_stored(self, payment: Payment, state: State) -> bool:
        """Whether an attempt may still reach the processor: after a 422 none can (it
        answered the only one); else for `settle_after` seconds since the last unanswered
        one, or since an adopted payment was taken over."""
        if state is State.STORED:
            return False
        return self._loop.time() - payment.unsettled_since < self._settings.settle_after

    async def _resend(self, payment: Payment) -> State:
        name, requested_at = payment.unsettled_on, payment.requested_at_ms
        assert name is not None and requested_at is not None
        outcome = await self._clients[name].send(payment.body(format_ms(requested_at)))
        self._answered(payment, name, outcome)
        return TRANSITIONS[State.UNSETTLED][outcome]

    def _answered(self, payment: Payment, name: str, outcome: Outcome) -> None:
        """What an answer to a send on `name` says beyond the move it makes."""
        if outcome is Outcome.CONFIRMED:
            assert payment.requested_at_ms is not None
            self._record(payment, name, payment.requested_at_ms, payment.cents)
        elif outcome is Outcome.UNKNOWN:
            payment.unsettled_since = self._loop.time()
        elif outcome is Outcome.REFUSED:
            self._health[name].refused(self._loop.time())

    def _release(self, payment: Payment, state: State) -> None:
        """The payment leaves every processor unstored: journaled as not stored where its
        attempt went, or, taken over, as accepted here."""
        if state is State.ADOPTED:
            self._journal.accepted(payment)
        else:
            self._journal.not_stored(payment)
            payment.unsettled_on = None

    def _record(self, payment: Payment, name: str, requested_at_ms: int, cents: int) -> None:
        """The processor proved it stored this payment with this requestedAt and amount."""
        self._journal.confirmed(payment, name, requested_at_ms, cents)
        self._ledger.record(
            payment.correlation_id, name, requested_at_ms, cents, payment.accepted_ms
        )
        payment.unsettled_on = None
        counts = self._counts[name]
        counts.confirmed += 1
        counts.confirmed_cents += cents
