"""The processor's two admission limits (SPEC.md §3).

`PaymentSlots` bounds the payments in their delay/store phase: `limit` at once, `queue_limit`
more waiting (oldest first) for a slot, the rest refused at once.

`HealthWindow` is the shared fixed window of `GET /payments/service-health`, modelled on .NET's
`FixedWindowRateLimiter` with PermitLimit 1, QueueLimit 2, OldestFirst, which the official
processor uses: windows of `seconds` follow one another from the first call; each window has
one permit; a caller finding it taken waits in a queue of two, and each new window gives its
permit to the oldest waiter, so waiters are answered one per window. While anyone waits, new
callers cannot take a permit directly; with the queue full they are refused.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class PaymentSlots:
    def __init__(self, limit: int, queue_limit: int) -> None:
        self.limit = limit
        self.queue_limit = queue_limit
        self.in_flight = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        if self.in_flight < self.limit and not self._waiting:
            self.in_flight += 1
            return True
        return False

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def queue_full(self) -> bool:
        return len(self._waiting) >= self.queue_limit

    def queue(self) -> asyncio.Future[None]:
        """A place in the queue, taken now; done when a releasing payment hands its slot over
        (in_flight unchanged)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return waiter

    def release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a waiter is only ever done if cancelled at shutdown
                waiter.set_result(None)
                return
        self.in_flight -= 1


class HealthWindow:
    def __init__(self, seconds: float, queue_limit: int = 2) -> None:
        self._seconds = seconds
        self._queue_limit = queue_limit
        self._loop = asyncio.get_running_loop()
        self._start: float | None = None  # when the first window opened
        self._used = -1  # index of the last window whose permit was taken
        self._queue: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def try_take(self) -> bool:
        """Take the current window's permit if it is free and nobody is waiting for one."""
        index = self._index()
        if self._used < index and not self._queue:
            self._used = index
            return True
        return False

    @property
    def queue_full(self) -> bool:
        return len(self._queue) >= self._queue_limit

    def queue(self) -> asyncio.Future[None]:
        """A place in the queue, taken now; done when a later window gives it the permit."""
        waiter = self._loop.create_future()
        self._queue.append(waiter)
        if self._timer is None:
            self._schedule(max(self._index(), self._used) + 1)
        return waiter

    def retry_after(self) -> int:
        """Whole seconds until the next window opens (at least 1)."""
        assert self._start is not None
        opens = self._start + (self._index() + 1) * self._seconds
        return max(1, math.ceil(opens - self._loop.time()))

    def _index(self) -> int:
        now = self._loop.time()
        if self._start is None:
            self._start = now
        return int((now - self._start) // self._seconds)

    def _schedule(self, index: int) -> None:
        assert self._start is not None
        opens = self._start + index * self._seconds
        self._timer = self._loop.call_at(opens, self._open, index)

    def _open(self, index: int) -> None:
        self._timer = None
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                self._used = index
                waiter.set_result(None)
                break
        if self._queue:
            self._schedule(index + 1)
