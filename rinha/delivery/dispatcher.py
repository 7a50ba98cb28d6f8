"""The dispatcher: takes accepted payments from the line to the processors.

Rules (SPEC.md §3, §4), each one enforced in this package:
- A payment is recorded only after the processor proved it stored it, with exactly the
  processor and requestedAt that were sent (settle.py).
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
- A payment is never dropped: it is pending, and counted as such, until recorded or purged
  (backlog.py). A purge forgets every pending payment, waiting, set aside or in flight:
  deliveries under way are cancelled where they wait, so they send nothing more and record
  nothing.
- From the moment an attempt may leave until an answer says otherwise, the payment counts as
  unsettled on that processor. Should anything unforeseen fail on the way (the journal's
  disk, say), its delivery logs it and, after a pause, takes the same payment up again from
  that state: settled where it may be stored, never sent anywhere else meanwhile.

The parts: the backlog knows where each pending payment is; the scheduler decides when and
where the next one leaves (pacing, slots, the send window); the settle protocol carries one
payment to its end. The dispatcher is what the rest of the service calls, and runs one task
per delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Coroutine
from typing import Any

from rinha.config import DispatchSettings
from rinha.delivery.backlog import Backlog
from rinha.delivery.scheduler import Scheduler
from rinha.delivery.settle import ProcessorCounts, SettleProtocol, State
from rinha.health import ProcessorHealth
from rinha.journal import Journal, NoJournal
from rinha.ledger import Ledger
from rinha.payments import Payment
from rinha.processor_client import HealthReport, ProcessorClient

# How often a stopping dispatcher looks whether every pending payment is recorded.
_DRAIN_POLL = 0.05


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
        self._loop = asyncio.get_running_loop()
        self.health = {name: ProcessorHealth() for name in clients}
        self.counts = {name: ProcessorCounts() for name in clients}
        self._backlog = Backlog(capacity, clients, self.wake)
        self._scheduler = Scheduler(self._backlog, self.health, settings, self._start_delivery)
        self._settle = SettleProtocol(
            ledger, clients, journal, settings, self.health, self.counts, self._scheduler
        )
        self._deliveries: dict[asyncio.Task[None], Payment] = {}

    def start(self) -> None:
        self._scheduler.start()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for every pending payment to be recorded."""
        deadline = self._loop.time() + timeout
        while self.pending_count and self._loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL)

    async def stop(self) -> None:
        self._scheduler.stop()
        self._backlog.stop()
        for delivery in self._deliveries:
            delivery.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)

    @property
    def pending_count(self) -> int:
        return self._backlog.count

    @property
    def pending_cents(self) -> int:
        return self._backlog.cents

    @property
    def room(self) -> int:
        """Payments that may still be queued."""
        return self._backlog.room

    @property
    def held_count(self) -> int:
        """Pending payments on no processor: held, waiting for a free slot or the rate, set
        aside after a rejection, or taken over and being looked up."""
        return self._backlog.held_count

    def in_flight(self, name: str) -> int:
        """Payments taking a slot on `name`, fresh or being settled."""
        return len(self._backlog.slots[name])

    @property
    def full(self) -> bool:
        return self._backlog.full

    @property
    def max_in_flight(self) -> int:
        """Slots per processor: the cluster sets them (`allow`)."""
        return self._scheduler.max_in_flight

    @property
    def send_until(self) -> float:
        """The loop time until which attempts may leave: the cluster sets it (`allow`)."""
        return self._scheduler.send_until

    def restore(self, payments: list[Payment]) -> None:
        """Queue payments a previous run accepted, beyond the buffer's capacity (that is for
        this run's); an unsettled one is settled first, counting its settle time from now,
        since its attempt may still be held by the processor."""
        now = self._loop.time()
        for payment in payments:
            payment.accepted_at = payment.unsettled_since = now
        self._backlog.restore(payments)
        self._scheduler.soon()

    def take_up(self, payments: list[Payment], earlier_ids: Container[str]) -> None:
        """Restore a previous run's payments first in line, ahead of those this run accepted
        while its journal was read back, none of which has left yet. Of those, one whose id
        is in `earlier_ids` (the previous run accepted it) was a client's retry of that
        payment, answered 202 again: it is dropped, and the payment charged once."""
        accepted_meanwhile = self._backlog.take_line()
        self.restore(payments)
        for payment in accepted_meanwhile:
            if payment.correlation_id not in earlier_ids:
                self._backlog.add(payment)

    def adopt(self, payment: Payment) -> None:
        """Take up a payment from a replica that died (room permitting): it may have sent it
        to either processor, so it is only looked up on both, taking no slot, until
        `settle_after` seconds from now, longer than any attempt it had under way can take;
        found, it is recorded, else it waits in line as if accepted here."""
        if self.full:
            raise ValueError("no room for a payment taken over")
        payment.accepted_at = payment.unsettled_since = self._loop.time()
        self._backlog.add_adopted(payment)
        self._track(self._deliver_adopted(payment), payment)

    def allow(self, until: float, slots: int) -> None:
        """Attempts may leave until loop time `until`, `slots` at once on each processor."""
        self._scheduler.send_until = until
        self._scheduler.max_in_flight = slots
        self.wake()

    def wake(self) -> None:
        """Something outside the scheduler changed what may be sent."""
        self._scheduler.soon()

    def submit(self, payment: Payment) -> bool:
        """Queue an accepted payment; False when the buffer is full."""
        backlog = self._backlog
        if backlog.full:
            return False
        payment.accepted_at = self._loop.time()
        # Behind other waiting payments it changes nothing: whatever holds the oldest back
        # (a hold, full slots, pacing) already has a timer or a delivery that runs the pass.
        if backlog.add(payment):
            self._scheduler.soon()
        return True

    def purge(self, up_to_ms: float) -> list[Payment]:
        """Forget every pending payment accepted at or before `up_to_ms` (wall clock), waiting,
        set aside or in flight; the payments that stay are returned."""
        # A delivery cancelled before its first step never runs its own clean-up: the
        # backlog frees its slot, and its probe ends here.
        for delivery, payment in self._deliveries.items():
            if payment.accepted_ms <= up_to_ms:
                delivery.cancel()
        for health in self.health.values():
            health.end_probe()
        return self._backlog.purge(up_to_ms)

    def apply_health(self, name: str, report: HealthReport) -> None:
        self.counts[name].health_reports += 1
        self.health[name].report(report.failing, report.min_response_ms, self._loop.time())
        self._scheduler.soon()

    # deliveries

    def _start_delivery(self, payment: Payment, name: str, probe: bool) -> None:
        self._track(self._deliver(payment, name, probe), payment)

    def _track(self, delivery: Coroutine[Any, Any, None], payment: Payment) -> None:
        task = self._loop.create_task(delivery)
        self._deliveries[task] = payment
        task.add_done_callback(self._deliveries.pop)

    async def _deliver(self, payment: Payment, name: str, probe: bool) -> None:
        try:
            end = await self._settle.deliver(payment, name, probe)
        finally:
            self._backlog.leave_slot(name, payment)
            self._scheduler.soon()
        self._finish(payment, end)

    async def _deliver_adopted(self, payment: Payment) -> None:
        end = await self._settle.deliver_adopted(payment)
        self._backlog.leave_adopted(payment)
        self._finish(payment, end)
        self._scheduler.soon()

    def _finish(self, payment: Payment, end: State) -> None:
        """A delivery's end: recorded or another's, set aside, or first in line again."""
        if end is State.CONFIRMED or end is State.DROPPED:
            self._backlog.recorded(payment)
        elif end is State.REJECTED:
            self._backlog.set_aside(payment)
        else:
            self._backlog.first_again(payment)
