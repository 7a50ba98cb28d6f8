"""Workers that take accepted payments from the ring buffer to the processors.

Rules (SPEC.md §3, §4), each one enforced here:
- A payment is recorded only after the processor proved it stored it, with exactly the
  processor and requestedAt that were sent.
- A refused attempt (500, 429, connection refused) stored nothing: route again, maybe elsewhere.
- An unknown attempt (timeout, reset) may have been stored. The payment stays on that
  processor, looking it up (`GET /payments/{id}`) and re-sending the identical body until one
  of them settles it: found, 200 or 422 mean stored with that requestedAt. It is released to
  go elsewhere only when the lookup says "not stored" and `settle_after` seconds have passed
  since the last unknown attempt, longer than a processor can hold a request.
- A payment is never dropped: it is pending, and counted as such, until recorded.
- From the moment an attempt may leave until an answer says otherwise, the payment counts as
  unsettled on that processor. Should anything unforeseen fail on the way (the journal's
  disk, say), its worker logs it and, after a pause, takes the same payment up again from
  that state: settled where it may be stored, never sent anywhere else meanwhile.

Pacing: each processor gets at most `max_in_flight` fresh attempts at once from this replica
(three replicas stay under the processors' 800), and fresh attempts leave at most
`max_send_rate` a second, so that draining a backlog never takes the event loop away from
answering `POST /payments` (the test's p99 counts every request).

requestedAt is the send time plus the processor's announced delay plus `stamp_ahead_ms`. The
test's audit compares windows ending 2 s (or 1.5 s) before now, reading the processors' and
our summaries at once; a payment the processor stores after its requestedAt has entered such a
window can be counted there before our record of it exists. A processor stores a payment only
after its delay (SPEC.md §3), even one that arrived while it was failing and was fixed during
the wait, so the stamp is pushed past the delay, and a little more for the call itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from rinha.buffer import RingBuffer
from rinha.clock import format_ms, now_ms
from rinha.config import DispatchSettings
from rinha.health import ProcessorHealth
from rinha.journal import Journal, NoJournal
from rinha.ledger import Ledger
from rinha.payments import Payment
from rinha.processor_client import HealthReport, Outcome, ProcessorClient, StoredPayment
from rinha.routing import Route, RoutingState, choose_route

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0
# Held workers re-check at least this often, whatever they are told.
_MAX_HOLD = 1.0
# Our own share of a processor call's duration, beyond the processor's announced delay.
_CALL_OVERHEAD_MS = 5
# A worker whose delivery failed unexpectedly waits this long before trying that payment again.
_AFTER_ERROR = 1.0

log = logging.getLogger("rinha")


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
        self._buffer: RingBuffer[Payment] = RingBuffer(capacity)
        self.health = {name: ProcessorHealth(settings.probe_gap) for name in clients}
        self._slots = {name: _Slots(settings.max_in_flight) for name in clients}
        self._send_interval = 1.0 / settings.max_send_rate
        self._loop = asyncio.get_running_loop()
        self._next_send_at = self._loop.time()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._change: asyncio.Future[None] = self._loop.create_future()
        self._workers: list[asyncio.Task[None]] = []
        self.pending_count = 0
        self.pending_cents = 0

    def start(self) -> None:
        count = self._settings.workers
        self._workers = [self._loop.create_task(self._work()) for _ in range(count)]

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for every pending payment to be recorded."""
        deadline = self._loop.time() + timeout
        while self.pending_count and self._loop.time() < deadline:
            await asyncio.sleep(_FIRST_BACKOFF)

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    @property
    def full(self) -> bool:
        return len(self._buffer) == self._buffer.capacity

    def restore(self, payments: list[Payment]) -> None:
        """Queue payments a previous run accepted; an unsettled one is settled first, counting
        its settle time from now, since its attempt may still be held by the processor."""
        now = self._loop.time()
        for payment in payments:
            payment.unsettled_since = now
            if not self.submit(payment):
                raise ValueError("buffer capacity is below the payments to restore")

    def submit(self, payment: Payment) -> bool:
        """Queue an accepted payment; False when the buffer is full."""
        payment.accepted_at = self._loop.time()
        if not self._buffer.push(payment):
            return False
        self.pending_count += 1
        self.pending_cents += payment.cents
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        return True

    def apply_health(self, name: str, report: HealthReport) -> None:
        if self.health[name].report(report.failing, report.min_response_ms, self._loop.time()):
            self._announce_change()

    # workers

    async def _work(self) -> None:
        while True:
            payment = self._buffer.pop()
            if payment is None:
                waiter = self._loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            while True:
                try:
                    await self._deliver(payment)
                    break
                except Exception:
                    log.exception("delivering %s failed; trying again", payment.correlation_id)
                    await asyncio.sleep(_AFTER_ERROR)
            self.pending_count -= 1
            self.pending_cents -= payment.cents

    async def _deliver(self, payment: Payment) -> None:
        while True:
            if payment.unsettled_on is not None:
                if await self._settle(payment):
                    return
                continue
            route = self._choose(payment)
            if route is Route.HOLD:
                await self._hold(payment)
                continue
            if await self._attempt(payment, route.value):
                return

    def _choose(self, payment: Payment) -> Route:
        now = self._loop.time()
        default, fallback = self.health["default"], self.health["fallback"]
        held_enough = now - payment.accepted_at >= self._settings.max_hold
        # Seconds until a default slot frees for this payment if every queued payment goes
        # there first: the queue ahead, over the slots, times one call's expected duration.
        ahead = self._slots["default"].waiting + len(self._buffer)
        call_seconds = (default.min_response_ms + _CALL_OVERHEAD_MS) / 1000
        backlog = ahead / self._settings.max_in_flight * call_seconds
        saturated = backlog > self._settings.spill_after
        state = RoutingState(default.view(now), fallback.view(now), held_enough, saturated)
        return choose_route(state)

    async def _attempt(self, payment: Payment, name: str) -> bool:
        """One fresh attempt on `name`; True when the payment is recorded."""
        health = self.health[name]
        probe = health.failing
        if probe:
            health.start_probe(self._loop.time())
        try:
            async with self._slots[name]:
                await self._pace()
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
            self._observe(name, failing=False)
            return True
        if outcome is Outcome.DUPLICATE:
            return await self._record_stored(payment, name)
        if outcome is Outcome.REFUSED:
            self._journal.not_stored(payment)
            payment.unsettled_on = None
            self._observe(name, failing=True)
            return False
        payment.unsettled_since = self._loop.time()
        return False

    async def _settle(self, payment: Payment) -> bool:
        """Resolve an unknown attempt; True when recorded, False when released unstored.

        Every attempt on this processor carries the same correlationId and requestedAt, so
        whichever of them is stored, it is stored as sent. The lookup comes first because it
        is not delayed like a payment; the re-send gets a lost attempt processed promptly.
        """
        name = payment.unsettled_on
        assert name is not None and payment.requested_at_ms is not None
        client = self._clients[name]
        body = payment.body(format_ms(payment.requested_at_ms))
        backoff = _FIRST_BACKOFF
        while True:
            stored = await client.lookup(payment.correlation_id)
            if isinstance(stored, StoredPayment):
                self._record(payment, name, stored.requested_at_ms, stored.cents)
                return True
            settled_long_enough = (
                self._loop.time() - payment.unsettled_since >= self._settings.settle_after
            )
            if stored is None and settled_long_enough:
                self._journal.not_stored(payment)
                payment.unsettled_on = None
                return False
            outcome = await client.send(body)
            if outcome is Outcome.CONFIRMED or outcome is Outcome.DUPLICATE:
                self._record(payment, name, payment.requested_at_ms, payment.cents)
                return True
            if outcome is Outcome.UNKNOWN:
                payment.unsettled_since = self._loop.time()
            else:
                self._observe(name, failing=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _record_stored(self, payment: Payment, name: str) -> bool:
        """A 422 on a fresh attempt: record the stored payment as the processor has it."""
        backoff = _FIRST_BACKOFF
        while True:
            stored = await self._clients[name].lookup(payment.correlation_id)
            if isinstance(stored, StoredPayment):
                self._record(payment, name, stored.requested_at_ms, stored.cents)
                return True
            if stored is None:
                self._journal.not_stored(payment)
                payment.unsettled_on = None
                return False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _record(self, payment: Payment, name: str, requested_at_ms: int, cents: int) -> None:
        """The processor proved it stored this payment with this requestedAt and amount."""
        self._journal.confirmed(payment, name, requested_at_ms, cents)
        self._ledger.record(payment.correlation_id, name, requested_at_ms, cents)
        payment.unsettled_on = None

    def _observe(self, name: str, *, failing: bool) -> None:
        health, now = self.health[name], self._loop.time()
        if health.refused(now) if failing else health.confirmed(now):
            self._announce_change()

    def _announce_change(self) -> None:
        self._change.set_result(None)
        self._change = self._loop.create_future()

    async def _hold(self, payment: Payment) -> None:
        """Wait for news about either processor, until a probe of a failing one is due or the
        payment has waited long enough for the default. While a probe is in flight the next
        one is not due: its worker probes again if it is refused, and the hundreds of held
        workers sleep instead of polling for it."""
        now = self._loop.time()
        wake_at = payment.accepted_at + self._settings.max_hold
        for health in self.health.values():
            if health.failing and not health.probing:
                wake_at = min(wake_at, health.next_probe_at())
        timeout = min(max(wake_at - now, _FIRST_BACKOFF), _MAX_HOLD)
        await asyncio.wait([self._change], timeout=timeout)

    async def _pace(self) -> None:
        """Space fresh attempts `1 / max_send_rate` apart."""
        now = self._loop.time()
        send_at = max(self._next_send_at, now)
        self._next_send_at = send_at + self._send_interval
        if send_at > now:
            await asyncio.sleep(send_at - now)


class _Slots:
    """At most `size` holders at once; the others wait their turn, counted in `waiting`."""

    __slots__ = ("_free", "_turns", "waiting")

    def __init__(self, size: int) -> None:
        self._free = size
        self._turns: deque[asyncio.Future[None]] = deque()
        self.waiting = 0

    async def __aenter__(self) -> None:
        if self._free:
            self._free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        self.waiting += 1
        try:
            await turn  # the releasing holder hands its slot over
        finally:
            self.waiting -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1
