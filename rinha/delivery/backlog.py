"""Where each pending payment is, and how many there are.

A payment accepted and not yet recorded is pending, and counted as such, until it is recorded
or purged. It is in exactly one place:
- waiting in line, in one FIFO ring buffer, oldest first: the scheduler takes it from there;
- set aside after a processor rejected it, with the timer that puts it back in line;
- on a processor's slot, with the loop time its delivery started, oldest first;
- taken over from a dead replica and being looked up, on no slot.

The ring buffer is sized for every pending payment, so a payment coming back from a slot or
from aside always fits; it grows when payments an earlier run accepted are restored, which the
bound on pending payments does not count (`capacity` grows by as many).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from rinha.buffer import RingBuffer
from rinha.payments import Payment

# A rejected payment is unlikely to fare better soon; a restart takes it up at once (its
# journal has it pending).
_AFTER_REJECTION = 30.0

log = logging.getLogger("rinha")


class Backlog:
    def __init__(
        self, capacity: int, processors: Iterable[str], returned: Callable[[], None]
    ) -> None:
        self.line: RingBuffer[Payment] = RingBuffer(capacity)
        self.capacity = capacity  # read on every POST: a plain int, not the buffer's property
        self.slots: dict[str, dict[Payment, float]] = {name: {} for name in processors}
        self._aside: dict[Payment, asyncio.TimerHandle] = {}
        self._adopted: set[Payment] = set()
        self._returned = returned  # called when a payment set aside is back in line
        self._loop = asyncio.get_running_loop()
        self.count = 0
        self.cents = 0

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    @property
    def room(self) -> int:
        return self.capacity - self.count

    @property
    def held_count(self) -> int:
        return len(self.line) + len(self._aside) + len(self._adopted)

    def add(self, payment: Payment) -> bool:
        """Count a payment in and put it last in line; True when it is alone there."""
        self.line.push(payment)  # fits: the buffer has room for every pending payment
        self.count += 1
        self.cents += payment.cents
        return len(self.line) == 1

    def restore(self, payments: list[Payment]) -> None:
        """Count in payments an earlier run accepted, last in line, with room made for them."""
        self.capacity += len(payments)
        if self.capacity > self.line.capacity:
            # Doubled at least: a store's takeover restores its payments one at a time.
            line: RingBuffer[Payment] = RingBuffer(max(self.capacity, 2 * self.line.capacity))
            while (payment := self.line.pop()) is not None:
                line.push(payment)
            self.line = line
        for payment in payments:
            self.add(payment)

    def take_line(self) -> list[Payment]:
        """Take every payment waiting in line out of the backlog, oldest first."""
        taken = []
        while (payment := self.line.pop()) is not None:
            self._forget(payment)
            taken.append(payment)
        return taken

    def add_adopted(self, payment: Payment) -> None:
        self._adopted.add(payment)
        self.count += 1
        self.cents += payment.cents

    def drop_first(self) -> None:
        """The first in line is another replica's to send."""
        payment = self.line.pop()
        assert payment is not None
        self._forget(payment)

    def take_slot(self, name: str, at: float) -> None:
        """Move the first in line onto a slot of `name`."""
        payment = self.line.pop()
        assert payment is not None
        self.slots[name][payment] = at

    def leave_slot(self, name: str, payment: Payment) -> None:
        self.slots[name].pop(payment, None)  # a purge may have released it already

    def leave_adopted(self, payment: Payment) -> None:
        self._adopted.discard(payment)

    def recorded(self, payment: Payment) -> None:
        self._forget(payment)

    def first_again(self, payment: Payment) -> None:
        self.line.push_front(payment)  # fits: it is counted

    def set_aside(self, payment: Payment) -> None:
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
        self.line.push(payment)  # fits: it is counted
        self._returned()

    def _forget(self, payment: Payment) -> None:
        self.count -= 1
        self.cents -= payment.cents

    def purge(self, up_to_ms: float) -> list[Payment]:
        """Forget every pending payment accepted at or before `up_to_ms` (wall clock),
        wherever it is; the payments that stay are returned."""
        kept: list[Payment] = []
        waiting = []
        while (payment := self.line.pop()) is not None:
            waiting.append(payment)
        for payment in waiting:
            if payment.accepted_ms > up_to_ms:
                self.line.push(payment)
                kept.append(payment)
        for payment, timer in list(self._aside.items()):
            if payment.accepted_ms > up_to_ms:
                kept.append(payment)
            else:
                timer.cancel()
                del self._aside[payment]
        for payments in self.slots.values():
            for payment in list(payments):
                if payment.accepted_ms > up_to_ms:
                    kept.append(payment)
                else:
                    del payments[payment]
        self._adopted = {p for p in self._adopted if p.accepted_ms > up_to_ms}
        kept.extend(self._adopted)
        self.count = len(kept)
        self.cents = sum(payment.cents for payment in kept)
        return kept

    def stop(self) -> None:
        for timer in self._aside.values():
            timer.cancel()
