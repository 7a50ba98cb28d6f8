"""The dispatcher: takes accepted payments from the ring buffer to the processors.

Rules (SPEC.md §3, §4), each one enforced here:
- A payment is recorded only after the processor proved it stored it, with exactly the
  processor and requestedAt that were sent.
- A refused attempt (500, 429, connection refused) stored nothing: route again, maybe elsewhere.
- A rejected attempt (another 4xx) stored nothing either, and tells about this payment, not
  the processor's health: the payment waits 30 s aside, holding nothing back, then is routed
  again. Only a processor that rejects two payments in a row, with no confirmation between,
  counts as failing: it is rejecting everything.
- An unknown attempt (timeout, reset) may have been stored. The payment stays on that
  processor, looking it up (`GET /payments/{id}`) and re-sending the identical body until one
  of them settles it: found means stored as the lookup shows it, a 200 stored as sent (a 422
  only says "stored": the next lookup says how). It is released to go elsewhere only when the
  lookup says "not stored" and `settle_after` seconds have passed since the last unknown
  attempt, longer than a processor can hold a request.
- A payment is never dropped: it is pending, and counted as such, until recorded or purged.
  A purge forgets every pending payment, waiting, set aside or in flight: deliveries under way
  are cancelled where they wait, so they send nothing more and record nothing.
- From the moment an attempt may leave until an answer says otherwise, the payment counts as
  unsettled on that processor. Should anything unforeseen fail on the way (the journal's
  disk, say), its delivery logs it and, after a pause, takes the same payment up again from
  that state: settled where it may be stored, never sent anywhere else meanwhile.

Scheduling: accepted payments wait in one FIFO ring buffer; nothing runs for a payment until
it leaves it. A scheduling pass (`_schedule`) runs after something changed, at most once per
50 ms (everything that changes meanwhile shares the next one). It looks at the oldest payment,
asks the routing policy where it goes, and starts a delivery task there if that processor has
a free slot; it goes on until the oldest payment must wait. A payment that must be held stays in the buffer, and one timer wakes the pass when
a hold ends or a probe is due. So a POST only queues, held payments cost nothing, and a health
change wakes one pass, not every payment.

Pacing: each processor has at most `max_in_flight` payments on it at once from this replica,
fresh or being settled (three replicas stay under the processors' 800), and deliveries start
at most `max_send_rate` a second, so that draining a backlog never takes the event loop away
from answering `POST /payments` (the test's p99 counts every request).

requestedAt is the send time plus the processor's announced delay plus `stamp_ahead_ms`. The
test's audit compares windows ending 2 s (or 1.5 s) before now, reading the processors' and
our summaries at once; a payment the processor stores after its requestedAt has entered such a
window can be counted there before our record of it exists. A processor stores a payment only
after its delay (SPEC.md §3), even one that arrived while it was failing and was fixed during
the wait, so the stamp is pushed past the delay, plus a margin for a delay raised since the
last health report (README: the final's worst such rise leaves 203 ms with the default 100).
"""

from __future__ import annotations

import asyncio
import logging
import math

from rinha.buffer import RingBuffer
from rinha.clock import format_ms, now_ms
from rinha.config import DispatchSettings
from rinha.health import ProcessorHealth
from rinha.journal import Journal, NoJournal
from rinha.ledger import Ledger
from rinha.payments import Ownership, Payment
from rinha.processor_client import HealthReport, Outcome, ProcessorClient, StoredPayment
from rinha.routing import Route, RoutingState, choose_route

# Retries of a lookup or re-send on one processor wait this long at first, doubling up to the
# most.
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
# How often a stopping dispatcher looks whether every pending payment is recorded.
_DRAIN_POLL = 0.05
# Our own share of a processor call's duration, beyond the processor's announced delay.
_CALL_OVERHEAD_MS = 5
# A delivery that failed unexpectedly waits this long before trying that payment again.
_AFTER_ERROR = 1.0
# A payment a processor rejected (a 4xx other than 422 and 429) waits this long before it is
# routed again: the same body is unlikely to fare better soon, and a restart takes it up at
# once (its journal has it pending).
_AFTER_REJECTION = 30.0
# Scheduling passes run at most once per this interval. Waking up costs far more CPU than the
# work done once awake: the payments of one interval leave together, their answers come back
# together, and the processors' work bunches the same way. 50 ms rather than 20 cut the
# replicas' CPU per payment by 13-25% (README); 100 ms cut it further but raised the POST
# p99: the answers of a pass arrive together and POSTs wait behind them.
_PASS_INTERVAL = 0.05
# Deliveries may start this far ahead of the paced rate: a pass starts one interval's worth at
# once rather than arming a timer for each.
_PACING_SLACK = _PASS_INTERVAL

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


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        clients: dict[str, ProcessorClient],
        journal: Journal | NoJournal,
        settings: DispatchSettings,
        *,
        capacity: int,
    ) -> None:
        self._ledger = ledger
        self._clients = clients
        self._journal = journal
        self._settings = settings
        # Every pending payment that no delivery holds, oldest first.
        self._waiting: RingBuffer[Payment] = RingBuffer(capacity)
        self.health = {name: ProcessorHealth() for name in clients}
        self.counts = {name: ProcessorCounts() for name in clients}
        # The payments each processor holds a slot for, with when each started, oldest first.
        self._on: dict[str, dict[Payment, float]] = {name: {} for name in clients}
        # Slots per processor, and the loop time until which attempts may leave: the cluster
        # sets both (`allow`); nothing leaves before it does.
        self.max_in_flight = 0
        self.send_until = -math.inf
        self._send_interval = 1.0 / settings.max_send_rate
        self._loop = asyncio.get_running_loop()
        self._next_send_at = self._loop.time()
        self._deliveries: dict[asyncio.Task[None], Payment] = {}
        # Payments a processor rejected, each with the timer that takes it back.
        self._aside: dict[Payment, asyncio.TimerHandle] = {}
        # Payments taken over from a dead replica, being looked up on both processors.
        self._adopted: set[Payment] = set()
        self._running = False
        self._pass_due = False
        self._last_pass = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.pending_count = 0
        self.pending_cents = 0

    def start(self) -> None:
        self._running = True
        self._schedule_soon()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for every pending payment to be recorded."""
        deadline = self._loop.time() + timeout
        while self.pending_count and self._loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL)

    async def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
        for timer in self._aside.values():
            timer.cancel()
        for delivery in self._deliveries:
            delivery.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)

    @property
    def room(self) -> int:
        """Payments that may still be queued."""
        return self._waiting.capacity - self.pending_count

    @property
    def held_count(self) -> int:
        """Pending payments on no processor: held, waiting for a free slot or the rate, set
        aside after a rejection, or taken over and being looked up."""
        return len(self._waiting) + len(self._aside) + len(self._adopted)

    def in_flight(self, name: str) -> int:
        """Payments taking a slot on `name`, fresh or being settled."""
        return len(self._on[name])

    @property
    def full(self) -> bool:
        # Sized for every pending payment, so a delivery can always put its payment back.
        return self.pending_count >= self._waiting.capacity

    def restore(self, payments: list[Payment]) -> None:
        """Queue payments a previous run accepted; an unsettled one is settled first, counting
        its settle time from now, since its attempt may still be held by the processor."""
        now = self._loop.time()
        for payment in payments:
            payment.unsettled_since = now
            if not self.submit(payment):
                raise ValueError("buffer capacity is below the payments to restore")

    def adopt(self, payment: Payment) -> None:
        """Take up a payment from a replica that died (room permitting): it may have sent it
        to either processor, so it is only looked up on both, taking no slot, until
        `settle_after` seconds from now, longer than any attempt it had under way can take;
        found, it is recorded, else it waits in line as if accepted here."""
        if self.full:
            raise ValueError("no room for a payment taken over")
        payment.accepted_at = self._loop.time()
        until = payment.accepted_at + self._settings.settle_after
        self.pending_count += 1
        self.pending_cents += payment.cents
        self._adopted.add(payment)
        delivery = self._loop.create_task(self._deliver_adopted(payment, until))
        self._deliveries[delivery] = payment
        delivery.add_done_callback(self._deliveries.pop)

    def allow(self, until: float, slots: int) -> None:
        """Attempts may leave until loop time `until`, `slots` at once on each processor."""
        self.send_until = until
        self.max_in_flight = slots
        self.wake()

    def wake(self) -> None:
        """Something outside the dispatcher changed what may be sent."""
        self._schedule_soon()

    def submit(self, payment: Payment) -> bool:
        """Queue an accepted payment; False when the buffer is full."""
        if self.full:
            return False
        payment.accepted_at = self._loop.time()
        self._waiting.push(payment)  # fits: the buffer has room for every pending payment
        self.pending_count += 1
        self.pending_cents += payment.cents
        # Behind other waiting payments it changes nothing: whatever holds the oldest back
        # (a hold, full slots, pacing) already has a timer or a delivery that runs the pass.
        if len(self._waiting) == 1:
            self._schedule_soon()
        return True

    def purge(self, up_to_ms: float) -> list[Payment]:
        """Forget every pending payment accepted at or before `up_to_ms` (wall clock), waiting,
        set aside or in flight; the payments that stay are returned."""
        kept: list[Payment] = []
        waiting = []
        while (payment := self._waiting.pop()) is not None:
            waiting.append(payment)
        for payment in waiting:
            if payment.accepted_ms > up_to_ms:
                self._waiting.push(payment)
                kept.append(payment)
        for payment, timer in list(self._aside.items()):
            if payment.accepted_ms > up_to_ms:
                kept.append(payment)
            else:
                timer.cancel()
                del self._aside[payment]
        # A delivery cancelled before its first step never runs its own clean-up: its slot
        # and probe are released here.
        for delivery, payment in self._deliveries.items():
            if payment.accepted_ms <= up_to_ms:
                delivery.cancel()
        for name, payments in self._on.items():
            for payment in list(payments):
                if payment.accepted_ms > up_to_ms:
                    kept.append(payment)
                else:
                    del payments[payment]
            self.health[name].end_probe()
        self._adopted = {p for p in self._adopted if p.accepted_ms > up_to_ms}
        kept.extend(self._adopted)
        self.pending_count = len(kept)
        self.pending_cents = sum(payment.cents for payment in kept)
        return kept

    def apply_health(self, name: str, report: HealthReport) -> None:
        self.counts[name].health_reports += 1
        self.health[name].report(report.failing, report.min_response_ms, self._loop.time())
        self._schedule_soon()

    # scheduling

    def _schedule_soon(self) -> None:
        """A pass for a change: right after the current callbacks (the POST that queued a
        payment is answered first) when none ran in the last interval, else when the interval
        ends, for every change made meanwhile."""
        if self._running and not self._pass_due:
            self._pass_due = True
            wait = self._last_pass + _PASS_INTERVAL - self._loop.time()
            if wait > 0:
                self._loop.call_later(wait, self._schedule)
            else:
                self._loop.call_soon(self._schedule)

    def _schedule(self) -> None:
        """Start deliveries for the oldest waiting payments until one of them has to wait."""
        self._pass_due = False
        if not self._running:
            return
        now = self._last_pass = self._loop.time()
        if now >= self.send_until:
            return  # the next lease renewal runs the pass
        while (payment := self._waiting.peek()) is not None:
            if payment.ownership is not Ownership.OURS:
                if payment.ownership is Ownership.CLAIMING:
                    return  # its claim is being stored; the claim's end runs the pass
                self._waiting.pop()  # another replica received it first and sends it
                self.pending_count -= 1
                self.pending_cents -= payment.cents
                continue
            if payment.unsettled_on is not None:
                name = payment.unsettled_on  # it may be stored there: settle it there first
            else:
                route = self._choose(payment, now)
                if route is Route.HOLD:
                    self._wake_for_held(payment, now)
                    return
                name = route.value
            if len(self._on[name]) >= self.max_in_flight:
                return  # the delivery that frees a slot runs the next pass
            if self._next_send_at > now + _PACING_SLACK:
                self._wake_at(self._next_send_at - _PACING_SLACK)
                return
            self._next_send_at = max(self._next_send_at, now) + self._send_interval
            self._waiting.pop()
            self._on[name][payment] = now
            health = self.health[name]
            probe = health.failing and payment.unsettled_on is None
            if probe:
                health.start_probe(now)
            delivery = self._loop.create_task(self._deliver(payment, name, probe))
            self._deliveries[delivery] = payment
            delivery.add_done_callback(self._deliveries.pop)

    def _choose(self, payment: Payment, now: float) -> Route:
        default, fallback = self.health["default"], self.health["fallback"]
        held_enough = now - payment.accepted_at >= self._settings.max_hold
        # Seconds until a default slot frees for the last waiting payment if every waiting
        # payment goes there: the queue over the slots, times one call's expected duration.
        # With every slot taken, the oldest call's age shows a delay raised since the last
        # health report, seconds before the next one says so.
        expected_ms: float = default.min_response_ms
        on_default = self._on["default"]
        if len(on_default) >= self.max_in_flight:
            oldest = next(iter(on_default.values()))
            expected_ms = max(expected_ms, (now - oldest) * 1000)
        call_seconds = (expected_ms + _CALL_OVERHEAD_MS) / 1000
        backlog = len(self._waiting) / max(self.max_in_flight, 1) * call_seconds
        saturated = backlog > self._settings.spill_after
        state = RoutingState(default.view(now), fallback.view(now), held_enough, saturated)
        return choose_route(state)

    def _wake_for_held(self, payment: Payment, now: float) -> None:
        """Wake the next pass when the oldest payment's hold ends or a probe is due. A probe
        in flight needs no timer: its end runs a pass."""
        moments = [payment.accepted_at + self._settings.max_hold]
        for health in self.health.values():
            if health.failing and not health.probing:
                moments.append(health.next_probe_at())
        future = [moment for moment in moments if moment > now]
        if future:
            self._wake_at(min(future))

    def _wake_at(self, when: float) -> None:
        # No sooner than the next pass may run: woken whenever one more payment may leave
        # (paced, or its hold ended), a drain would start its payments one at a time, each
        # one a wakeup of its own.
        when = max(when, self._last_pass + _PASS_INTERVAL)
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._schedule()

    # deliveries

    async def _deliver(self, payment: Payment, name: str, probe: bool) -> None:
        """Carry `payment` on `name` until it is recorded or known not stored there; in the
        second case it waits again, first in line."""
        try:
            end = await self._carry(payment, name, probe)
        finally:
            self._on[name].pop(payment, None)  # a purge may have released it already
            self._schedule_soon()
        self._finish(payment, end)

    def _finish(self, payment: Payment, end: Outcome) -> None:
        """A delivery's end: recorded, set aside, or first in line again."""
        if end is Outcome.CONFIRMED:
            self.pending_count -= 1
            self.pending_cents -= payment.cents
        elif end is Outcome.REJECTED:
            self._set_aside(payment)
        else:
            self._waiting.push_front(payment)  # fits: it is counted in pending_count

    async def _carry(self, payment: Payment, name: str, probe: bool) -> Outcome:
        """CONFIRMED when recorded, REFUSED when known not stored, REJECTED when the processor
        rejected this one payment."""
        fresh = payment.unsettled_on is None
        while True:
            try:
                if fresh:
                    fresh = False
                    end = await self._attempt(payment, name, probe)
                    if end is not None:
                        return end
                return await self._settle(payment)
            except Exception:
                log.exception("delivering %s failed; trying again", payment.correlation_id)
                await asyncio.sleep(_AFTER_ERROR)
                if payment.unsettled_on is None:
                    return Outcome.REFUSED  # no attempt may have left: route it again

    def _set_aside(self, payment: Payment) -> None:
        """A processor rejected this one payment, which says nothing of its health: the
        payment waits outside the line, holding nothing back, and is tried again later."""
        log.warning(
            "%s rejected by the processor; trying it again in %.0f s",
            payment.correlation_id,
            _AFTER_REJECTION,
        )
        self._aside[payment] = self._loop.call_later(_AFTER_REJECTION, self._take_back, payment)

    def _take_back(self, payment: Payment) -> None:
        del self._aside[payment]
        self._waiting.push(payment)  # fits: it is counted in pending_count
        self._schedule_soon()

    async def _attempt(self, payment: Payment, name: str, probe: bool) -> Outcome | None:
        """One fresh attempt on `name`: how it ended (as `_carry`), None when unknown (to be
        settled on `name`)."""
        health = self.health[name]
        if self._loop.time() >= self.send_until:  # the lease lapsed since the pass
            if probe:
                health.end_probe()
            return Outcome.REFUSED
        try:
            requested_at = now_ms() + health.min_response_ms + self._settings.stamp_ahead_ms
            payment.requested_at_ms = requested_at
            self._journal.sent(payment, name, requested_at)
            payment.unsettled_on = name
            payment.unsettled_since = self._loop.time()
            outcome = await self._clients[name].send(payment.body(format_ms(requested_at)))
        finally:
            if probe:
                health.end_probe()
        if outcome is Outcome.CONFIRMED:
            self._record(payment, name, requested_at, payment.cents)
            health.confirmed(self._loop.time())
            return Outcome.CONFIRMED
        if outcome is Outcome.DUPLICATE:
            return await self._record_stored(payment, name)
        if outcome is Outcome.REJECTED and health.rejects_everything(payment.correlation_id):
            outcome = Outcome.REFUSED  # a wrong URL or a proxy answering 4xx: fail over
        if outcome is Outcome.REFUSED or outcome is Outcome.REJECTED:
            self._journal.not_stored(payment)
            payment.unsettled_on = None
            if outcome is Outcome.REFUSED:
                health.refused(self._loop.time())
            return outcome
        payment.unsettled_since = self._loop.time()
        return None

    async def _settle(self, payment: Payment) -> Outcome:
        """Resolve an unknown attempt: CONFIRMED when recorded, REFUSED when released
        unstored."""
        name = payment.unsettled_on
        assert name is not None
        counts = self.counts[name]
        counts.settling += 1
        try:
            end = await self._settle_on(payment, name)
        finally:
            counts.settling -= 1
        if end is Outcome.CONFIRMED:
            counts.settled_stored += 1
        else:
            counts.settled_not_stored += 1
        return end

    async def _settle_on(self, payment: Payment, name: str) -> Outcome:
        """A 200 to the re-send stores it with the requestedAt sent; anything else is recorded
        as the lookup finds it. The lookup comes first because it is not delayed like a
        payment; the re-send gets a lost attempt processed promptly.
        """
        assert payment.requested_at_ms is not None
        client = self._clients[name]
        body = payment.body(format_ms(payment.requested_at_ms))
        backoff = _FIRST_BACKOFF
        while True:
            stored = await client.lookup(payment.correlation_id)
            if isinstance(stored, StoredPayment):
                self._record(payment, name, stored.requested_at_ms, stored.cents)
                return Outcome.CONFIRMED
            settled_long_enough = (
                self._loop.time() - payment.unsettled_since >= self._settings.settle_after
            )
            if stored is None and settled_long_enough:
                self._journal.not_stored(payment)
                payment.unsettled_on = None
                return Outcome.REFUSED
            # Past the lease, a replica taking this one over may send it: lookups only.
            if self._loop.time() < self.send_until:
                outcome = await client.send(body)
                if outcome is Outcome.CONFIRMED:
                    self._record(payment, name, payment.requested_at_ms, payment.cents)
                    return Outcome.CONFIRMED
                # A 422 says the processor has a payment with this id, not with which
                # requestedAt: the next lookup records what it has.
                if outcome is Outcome.UNKNOWN:
                    payment.unsettled_since = self._loop.time()
                elif outcome is Outcome.REFUSED:
                    self.health[name].refused(self._loop.time())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _deliver_adopted(self, payment: Payment, until: float) -> None:
        while True:
            try:
                end = await self._settle_anywhere(payment, until)
                break
            except Exception:
                log.exception("looking up %s failed; trying again", payment.correlation_id)
                await asyncio.sleep(_AFTER_ERROR)
        self._adopted.discard(payment)
        self._finish(payment, end)
        self._schedule_soon()

    async def _settle_anywhere(self, payment: Payment, until: float) -> Outcome:
        """A payment taken over from a dead replica: CONFIRMED when either processor has it,
        REFUSED (to be routed) once neither has it and loop time `until` is past, when the
        dead replica's last attempt is over. From then on it is this replica's, journaled as
        accepted here."""
        backoff = _FIRST_BACKOFF
        while True:
            unknown = False
            for name, client in self._clients.items():
                stored = await client.lookup(payment.correlation_id)
                if isinstance(stored, StoredPayment):
                    self._record(payment, name, stored.requested_at_ms, stored.cents)
                    return Outcome.CONFIRMED
                unknown = unknown or stored is not None
            if not unknown and self._loop.time() >= until:
                self._journal.accepted(payment)
                return Outcome.REFUSED
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _record_stored(self, payment: Payment, name: str) -> Outcome:
        """A 422 on a fresh attempt: record the stored payment as the processor has it."""
        backoff = _FIRST_BACKOFF
        while True:
            stored = await self._clients[name].lookup(payment.correlation_id)
            if isinstance(stored, StoredPayment):
                self._record(payment, name, stored.requested_at_ms, stored.cents)
                return Outcome.CONFIRMED
            if stored is None:
                self._journal.not_stored(payment)
                payment.unsettled_on = None
                return Outcome.REFUSED
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _record(self, payment: Payment, name: str, requested_at_ms: int, cents: int) -> None:
        """The processor proved it stored this payment with this requestedAt and amount."""
        self._journal.confirmed(payment, name, requested_at_ms, cents)
        self._ledger.record(
            payment.correlation_id, name, requested_at_ms, cents, payment.accepted_ms
        )
        payment.unsettled_on = None
        counts = self.counts[name]
        counts.confirmed += 1
        counts.confirmed_cents += cents
