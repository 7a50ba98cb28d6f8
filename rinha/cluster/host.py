"""One host's cluster: replicas that read each other's journals (rinha/cluster/peers.py).

- **Summary**: this replica's ledger and pending payments, plus what each peer's journal says
  now. Answered by any live replica alone, and exact while a peer is dead or restarting, with
  one bound: what a killed replica had sent and not yet heard back about may be stored by the
  processor meanwhile, and is counted once the replica, started again, settles it. A peer's
  journal that cannot be read makes the summary a 503, never a wrong figure.
- **Purge**: this replica forgets, and every peer is told on its control socket; a peer that
  is down gets the purge in its journal. Only a peer that is running and does not answer
  makes the purge a 503, and a retry purges everything again.
- **Health**: replica 1 polls the processors and pushes every report to the others.
- **Share of the processors' calls**: each replica's fixed `--max-in-flight`.
- **A dead replica**: restarted on its journal, it takes up what it held. It answers at once,
  while it reads its journal back; a summary asked meanwhile waits for the end of that
  (`TAKE_UP_WAIT`, else a 503), and a payment accepted meanwhile waits too, so that a client's
  retry of one the journal holds is found there and charged once.

With no peer named this is a lone replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from rinha.clock import now_ms
from rinha.cluster import Cluster, ClusterUnavailable, count_stored, poll_health
from rinha.cluster.peers import (
    HEALTH_PATH,
    PURGE_PATH,
    Peers,
    PeerUnavailable,
    decode_health,
    decode_purge,
)
from rinha.config import OneHost
from rinha.http import Answer, HttpServer, Request, response
from rinha.journal import Journal, NoJournal, Recovered
from rinha.ledger import Summary, Totals
from rinha.ledger.embedded import EmbeddedLedger
from rinha.processor_client import HealthReport, Outcome, ProcessorClient

if TYPE_CHECKING:
    from rinha.delivery import Dispatcher

log = logging.getLogger("rinha")

PEER_UNREADABLE = response(503, b'{"error":"a replica\'s journal cannot be read; totals unknown"}')
PURGE_INCOMPLETE = response(503, b'{"error":"a running replica did not answer; purge again"}')
PEER_UNSETTLED = response(
    503, b'{"error":"a stalled replica\'s attempt cannot be looked up; totals unknown"}'
)
# A peer whose journal has not grown for this long, and its attempts stamped longer ago than
# this (a requestedAt is past the processor's announced delay and the answer's way back), are
# looked up by a summary: its replica is stalled or dead.
OVERDUE_MS = 1000
TAKING_UP = response(503, b'{"error":"this replica is reading its journal back; totals unknown"}')
# How long a summary waits for a restarted replica to take up its journal: well within the
# 1.5 s HAProxy gives an answer (haproxy/haproxy.cfg).
TAKE_UP_WAIT = 1.0
CONTROL_OK = response(200, b"{}")
CONTROL_BAD_PURGE = response(400, b'{"error":"a purge names the moment it forgets up to"}')
CONTROL_NOT_FOUND = response(404, b'{"error":"no such route"}')
CONTROL_METHOD_NOT_ALLOWED = response(405, b'{"error":"method not allowed"}')


class HostCluster(Cluster):
    def __init__(
        self,
        topology: OneHost,
        journal: Journal | NoJournal,
        clients: dict[str, ProcessorClient],
        health_interval: float,
    ) -> None:
        self._ledger = EmbeddedLedger()
        super().__init__(journal, self._ledger)
        self._topology = topology
        self._peers = Peers(topology.peers)
        self._clients = clients
        self._health_interval = health_interval
        self._control = HttpServer(self._handle_control)
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = 0.0
        self._taken_up = asyncio.Event()
        # The latest purge's moment: what the journal's earlier runs left is forgotten up to
        # it when it is taken up, however late.
        self._purged_up_to = -math.inf

    def knows(self, correlation_id: str) -> bool:
        return correlation_id in self.known_ids or self._peers.know(correlation_id)

    async def start(self, dispatcher: Dispatcher) -> Awaitable[Recovered]:
        self._dispatcher = dispatcher
        if self._topology.control is not None:
            await self._control.listen_unix(self._topology.control)
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        if self._topology.peers:
            self._tasks.append(loop.create_task(self._peers.follow()))
        if self._topology.poll_health:
            poller = poll_health(self._clients, self._health_interval, self._publish)
            self._tasks.append(loop.create_task(poller))
        return loop.create_task(self._take_up())

    async def _take_up(self) -> Recovered:
        """Read the journal's earlier runs back and record their confirmed payments while
        this replica answers, then take the rest up in one step with no await: the purges
        asked meanwhile forget their part; the payments accepted meanwhile, held until now
        (nothing leaves before `allow`), go behind the earlier pending ones, and those that
        retried an earlier payment are dropped."""
        recovered = await self.journal.recover()
        await self.record_confirmed(recovered)
        if self._purged_up_to > -math.inf:
            recovered.purged(self._purged_up_to)
            # Recorded after a purge's own forgetting, some of them are its to forget.
            self._ledger.forget(self._purged_up_to)
        self.known_ids.update(recovered.known_ids)
        self._dispatcher.take_up(list(recovered.pending.values()), recovered.known_ids)
        self._dispatcher.allow(math.inf, self._topology.max_in_flight)
        self._taken_up.set()
        return recovered

    async def summary(self, from_ms: int | None, to_ms: int | None) -> Summary:
        if not self._taken_up.is_set():
            try:
                async with asyncio.timeout(TAKE_UP_WAIT):
                    await self._taken_up.wait()
            except TimeoutError:
                raise ClusterUnavailable(TAKING_UP, "journal still being read back") from None
        dispatcher = self._dispatcher
        totals = await self._ledger.summary(from_ms, to_ms)
        totals["pending"] = Totals(dispatcher.pending_count, dispatcher.pending_cents)
        try:
            for name, part in (await self._peers.totals(from_ms, to_ms)).items():
                totals[name] = totals[name] + part
        except PeerUnavailable as error:
            raise ClusterUnavailable(PEER_UNREADABLE, str(error)) from error
        await self._settle_overdue(totals, from_ms, to_ms)
        return totals

    async def _settle_overdue(
        self, totals: Summary, from_ms: int | None, to_ms: int | None
    ) -> None:
        """A peer whose journal has stopped growing, with attempts under way stamped a while
        ago: its replica is stalled or dead, and the processor may have stored them all the
        same, inside the windows an audit reads. Ask the processor (there are few)."""
        overdue = self._peers.overdue(OVERDUE_MS / 1000, now_ms() - OVERDUE_MS)
        if not overdue:
            return
        found = await asyncio.gather(
            *(self._clients[a.processor].lookup(a.correlation_id) for a in overdue)
        )
        for attempt, stored in zip(overdue, found):
            if isinstance(stored, Outcome):
                raise ClusterUnavailable(PEER_UNSETTLED, f"{attempt} cannot be looked up")
            if stored is None or stored.requested_at_ms not in attempt.sent_stamps:
                continue  # not stored, or another replica's acceptance of the id: its own
            count_stored(totals, attempt.processor, attempt.cents, stored, from_ms, to_ms)

    async def purge(self) -> None:
        up_to_ms = now_ms()
        unreached = None
        try:
            await self._peers.purge(up_to_ms)
        except PeerUnavailable as error:
            unreached = error  # every other replica purges all the same
        try:
            self._forget(up_to_ms)
        except OSError as error:
            raise ClusterUnavailable(PURGE_INCOMPLETE, str(error)) from error
        if unreached is not None:
            raise ClusterUnavailable(PURGE_INCOMPLETE, str(unreached)) from unreached

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._control.shutdown()
        await self._peers.close()

    def _forget(self, up_to_ms: int) -> None:
        """Everything accepted up to `up_to_ms`, at once (no await): the journal first, so
        that a restart forgets it too."""
        self.journal.purged(up_to_ms)
        self._purged_up_to = max(self._purged_up_to, up_to_ms)
        self._dispatcher.purge(up_to_ms)
        self._ledger.forget(up_to_ms)
        self.forget_known(up_to_ms)

    async def _publish(self, reports: dict[str, HealthReport]) -> None:
        for name, report in reports.items():
            self._dispatcher.apply_health(name, report)
        try:
            await self._peers.push_health(reports)
        except PeerUnavailable as error:
            # The peers start alongside this replica; one still starting gets the next
            # report, one interval later.
            loop = asyncio.get_running_loop()
            if loop.time() - self._started_at > self._health_interval:
                log.warning("health report not delivered to every peer: %s", error)

    def _handle_control(self, request: Request) -> Answer:
        path, method = request.path.decode("latin-1"), request.method
        if path == PURGE_PATH:
            if method != b"POST":
                return CONTROL_METHOD_NOT_ALLOWED
            try:
                self._forget(decode_purge(request.body))
            except (ValueError, KeyError, TypeError):
                return CONTROL_BAD_PURGE
            except OSError:
                return PURGE_INCOMPLETE
            return CONTROL_OK
        if path == HEALTH_PATH:
            if method != b"PUT":
                return CONTROL_METHOD_NOT_ALLOWED
            for name, report in decode_health(request.body).items():
                self._dispatcher.apply_health(name, report)
            return CONTROL_OK
        return CONTROL_NOT_FOUND
