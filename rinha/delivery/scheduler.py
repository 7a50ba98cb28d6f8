"""When and where the payments waiting in line leave.

Accepted payments wait in one FIFO line (backlog.py); nothing runs for a payment until it
leaves it. A scheduling pass runs after something changed, at most once per 50 ms (everything
that changes meanwhile shares the next one). It looks at the oldest payment, asks the routing
policy where it goes, and starts a delivery there if that processor has a free slot; it goes
on until the oldest payment must wait. A payment that must be held stays in line, and one
timer wakes the pass when a hold ends or a probe is due. So a POST only queues, held payments
cost nothing, and a health change wakes one pass, not every payment.

Pacing: each processor has at most `max_in_flight` payments on it at once from this replica,
fresh or being settled (three replicas stay under the processors' 800), and deliveries start
at most `max_send_rate` a second, so that draining a backlog never takes the event loop away
from answering `POST /payments` (the test's p99 counts every request). Attempts leave only
before `send_until` (loop time); the cluster sets that and the slots (rinha/cluster/).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from rinha.config import DispatchSettings
from rinha.delivery.backlog import Backlog
from rinha.health import ProcessorHealth
from rinha.payments import Ownership, Payment
from rinha.routing import Route, RoutingState, choose_route

# Our own share of a processor call's duration, beyond the processor's announced delay.
_CALL_OVERHEAD_MS = 5
# Waking up costs far more CPU than the work done once awake, so the payments of one interval
# leave together; longer raised the POST p99 (docs/measurements.md).
_PASS_INTERVAL = 0.05
# Deliveries may start this far ahead of the paced rate: a pass starts one interval's worth at
# once rather than arming a timer for each.
_PACING_SLACK = _PASS_INTERVAL

# Starts the delivery of a payment just put on a slot: (payment, processor, probe).
StartDelivery = Callable[[Payment, str, bool], None]


class Scheduler:
    def __init__(
        self,
        backlog: Backlog,
        health: dict[str, ProcessorHealth],
        settings: DispatchSettings,
        start_delivery: StartDelivery,
    ) -> None:
        self._backlog = backlog
        self._health = health
        self._settings = settings
        self._start_delivery = start_delivery
        # The cluster sets both (`allow`); nothing leaves before it does.
        self.max_in_flight = 0
        self.send_until = -math.inf
        self._send_interval = 1.0 / settings.max_send_rate
        self._loop = asyncio.get_running_loop()
        self._next_send_at = self._loop.time()
        self._running = False
        self._pass_due = False
        self._last_pass = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def start(self) -> None:
        self._running = True
        self.soon()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()

    def soon(self) -> None:
        """A pass for a change: right after the current callbacks (the POST that queued a
        payment is answered first) when none ran in the last interval, else when the interval
        ends, for every change made meanwhile."""
        if self._running and not self._pass_due:
            self._pass_due = True
            wait = self._last_pass + _PASS_INTERVAL - self._loop.time()
            if wait > 0:
                self._loop.call_later(wait, self._run_pass)
            else:
                self._loop.call_soon(self._run_pass)

    def _run_pass(self) -> None:
        """Start deliveries for the oldest waiting payments until one of them has to wait."""
        self._pass_due = False
        if not self._running:
            return
        now = self._last_pass = self._loop.time()
        if now >= self.send_until:
            return  # the next lease renewal runs the pass
        while (payment := self._backlog.line.peek()) is not None:
            if payment.ownership is not Ownership.OURS:
                if payment.ownership is Ownership.CLAIMING:
                    return  # its claim is being stored; the claim's end runs the pass
                self._backlog.drop_first()  # another replica received it first and sends it
                continue
            name = self._destination(payment, now)
            if name is None or not self._may_start(name, now):
                return
            self._next_send_at = max(self._next_send_at, now) + self._send_interval
            self._backlog.take_slot(name, now)
            health = self._health[name]
            probe = health.failing and payment.unsettled_on is None
            if probe:
                health.start_probe(now)
            self._start_delivery(payment, name, probe)

    def _destination(self, payment: Payment, now: float) -> str | None:
        """The processor the oldest payment goes to, or None while it is held (a timer then
        wakes the pass)."""
        if payment.unsettled_on is not None:
            return payment.unsettled_on  # it may be stored there: settle it there first
        route = self._choose(payment, now)
        if route is Route.HOLD:
            self._wake_for_held(payment, now)
            return None
        name: str = route.value
        return name

    def _may_start(self, name: str, now: float) -> bool:
        """Whether a delivery may start on `name` now: a slot is free and the pace allows."""
        if len(self._backlog.slots[name]) >= self.max_in_flight:
            return False  # the delivery that frees a slot runs the next pass
        if self._next_send_at > now + _PACING_SLACK:
            self._wake_at(self._next_send_at - _PACING_SLACK)
            return False
        return True

    def _choose(self, payment: Payment, now: float) -> Route:
        default, fallback = self._health["default"], self._health["fallback"]
        held_enough = now - payment.accepted_at >= self._settings.max_hold
        # Seconds until a default slot frees for the last waiting payment if every waiting
        # payment goes there: the queue over the slots, times one call's expected duration.
        # With every slot taken, the oldest call's age shows a delay raised since the last
        # health report, seconds before the next one says so.
        expected_ms: float = default.min_response_ms
        on_default = self._backlog.slots["default"]
        if len(on_default) >= self.max_in_flight:
            oldest = next(iter(on_default.values()))
            expected_ms = max(expected_ms, (now - oldest) * 1000)
        call_seconds = (expected_ms + _CALL_OVERHEAD_MS) / 1000
        backlog = len(self._backlog.line) / max(self.max_in_flight, 1) * call_seconds
        saturated = backlog > self._settings.spill_after
        state = RoutingState(default.view(now), fallback.view(now), held_enough, saturated)
        return choose_route(state)

    def _wake_for_held(self, payment: Payment, now: float) -> None:
        """Wake the next pass when the oldest payment's hold ends or a probe is due. A probe
        in flight needs no timer: its end runs a pass."""
        moments = [payment.accepted_at + self._settings.max_hold]
        for health in self._health.values():
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
        self._run_pass()
