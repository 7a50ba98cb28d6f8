"""Writes to the store off the request path, in batches.

Items are appended and the caller moves on. One task per writer wakes when there is something
to write, waits FLUSH_INTERVAL to gather a batch, and hands the oldest BATCH_LIMIT to its
`write`, which returns the items the store did not take. Those go back in front, to be written
again with newer ones after a pause that grows while writes keep failing: what is appended
while the store is down lands when it returns. Every write to the store is idempotent (an
insert meets a duplicate key, an update sets the same value), so writing an item twice is
harmless and losing one is the only fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pymongo.errors import PyMongoError

log = logging.getLogger("rinha")

FLUSH_INTERVAL = 0.02
# At most this many items per write, so that the backlog of an outage is written in pieces
# that each finish within the driver's operation timeout, rather than one write that times
# out, is sent again whole, and times out again. In the contest a flush holds a handful.
BATCH_LIMIT = 1000
# After a failed write; doubled up to the last value.
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 1.0

T = TypeVar("T")


def _keep_all(item: object) -> bool:
    return True


class BatchWriter(Generic[T]):
    def __init__(self, what: str, write: Callable[[list[T]], Awaitable[list[T]]]) -> None:
        self._what = what
        self._write = write
        self._unwritten: list[T] = []
        self._writing: list[T] = []
        self._has_unwritten = asyncio.Event()
        # What of the batch being written may go back, should its write fail: a forget
        # during the write applies to it too.
        self._keep: Callable[[T], bool] = _keep_all
        # Held by one write: `paused` waits for it, so that nothing is in flight meanwhile.
        self._writing_lock = asyncio.Lock()

    def add(self, item: T) -> None:
        self._unwritten.append(item)
        self._has_unwritten.set()

    @property
    def unwritten(self) -> list[T]:
        """Not stored yet, the batch being written included."""
        return self._writing + self._unwritten

    def forget(self, keep: Callable[[T], bool]) -> None:
        """Drop, at once, every unwritten item that `keep` refuses."""
        self._unwritten = [item for item in self._unwritten if keep(item)]
        self._keep = keep

    def paused(self) -> asyncio.Lock:
        """Held, no write is in flight."""
        return self._writing_lock

    async def write_forever(self) -> None:
        delay = FIRST_RETRY_DELAY
        while True:
            await self._has_unwritten.wait()
            await asyncio.sleep(FLUSH_INTERVAL)
            if await self.write_once():
                delay = FIRST_RETRY_DELAY
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def write_once(self) -> bool:
        """Write the oldest unwritten items; True when the store took all of them."""
        async with self._writing_lock:
            batch = self._writing = self._unwritten[:BATCH_LIMIT]
            del self._unwritten[:BATCH_LIMIT]
            self._keep = _keep_all
            failed = batch
            try:
                failed = await self._write(batch) if batch else []
            except PyMongoError as error:
                log.warning("%s: a write of %d failed: %s", self._what, len(batch), error)
            except Exception:
                log.exception("%s: a write of %d failed", self._what, len(batch))
            finally:
                # Cancelled (at a close), the whole batch goes back too.
                self._unwritten[:0] = [item for item in failed if self._keep(item)]
                self._writing = []
                if self._unwritten:
                    self._has_unwritten.set()
                else:
                    self._has_unwritten.clear()
            return not failed

    async def flush(self) -> None:
        """Write everything unwritten, unless a write fails."""
        while self._unwritten and await self.write_once():
            pass
        if self._unwritten:
            log.warning("%s: %d left unwritten", self._what, len(self._unwritten))
