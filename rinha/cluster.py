"""Health decisions: the processors' health endpoint is polled from one place only.

The endpoint allows one call per 5 s per processor for all callers together (SPEC.md §3), so
exactly one poller may run per deployment; it hands every report to the dispatcher.
"""

from __future__ import annotations

import asyncio

from rinha.dispatcher import Dispatcher
from rinha.processor_client import ProcessorClient


async def poll_health(
    dispatcher: Dispatcher, clients: dict[str, ProcessorClient], interval: float
) -> None:
    """Ask each processor for its health once per `interval`, forever."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        reports = await asyncio.gather(*(client.health() for client in clients.values()))
        for name, report in zip(clients, reports):
            if report is not None:
                dispatcher.apply_health(name, report)
        next_at = max(next_at + interval, loop.time())
        await asyncio.sleep(next_at - loop.time())
