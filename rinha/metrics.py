"""Prometheus metrics of one replica, served on a listener of their own (never the public port).

Nothing here runs on a request's path. The service keeps plain int counters where each event
already happens (app.py, delivery/, processor_client.py, journal.py); `ServiceCollector`
reads them, and the dispatcher's state, only when a scrape asks, and prometheus_client renders
the text format. Every series is this replica's view since it started: a restarted replica
starts its counters at zero again, which Prometheus's rate() and increase() allow for.

Event-loop lag is one timer a second that measures how late it fired: whatever held the loop
(a long callback, a scheduling pass, a collector pause) delayed it by as much.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from importlib.metadata import version

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from rinha.app import METHOD_NOT_ALLOWED, NOT_FOUND, App
from rinha.delivery import Dispatcher
from rinha.http import Answer, HttpServer, Request, response
from rinha.journal import Journal, NoJournal
from rinha.processor_client import ProcessorClient

METRICS_PATH = b"/metrics"
_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4.encode()
# One wakeup a second: lag is sampled, not traced, and the loop has idle stretches to keep.
LAG_INTERVAL = 1.0
_Family = type[GaugeMetricFamily] | type[CounterMetricFamily]


class LoopLag:
    """How late a periodic timer fires, in seconds: the last time, and the worst since the
    last scrape took it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last = 0.0
        self._worst = 0.0
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = self._loop.time() + LAG_INTERVAL
        self._timer = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        self.last = max(now - self._due, 0.0)
        self._worst = max(self._worst, self.last)
        self._due = now + LAG_INTERVAL
        self._timer = self._loop.call_at(self._due, self._fire)

    def take_worst(self) -> float:
        """The worst since the previous call; the last one also counts towards the next."""
        worst, self._worst = self._worst, self.last
        return worst

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ServiceCollector:
    """Reads the replica's counters and state at scrape time (a prometheus_client Collector)."""

    def __init__(
        self,
        app: App,
        dispatcher: Dispatcher,
        clients: dict[str, ProcessorClient],
        journal: Journal | NoJournal,
        lag: LoopLag,
    ) -> None:
        self._app = app
        self._dispatcher = dispatcher
        self._clients = clients
        self._journal = journal
        self._lag = lag
        self._version = version("rinha")

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("rinha_build", "The running build.", {"version": self._version})
        yield from self._payments()
        yield from self._processors()
        yield GaugeMetricFamily(
            "rinha_journal_bytes", "Size of the journal file (0 without one).", self._journal.size
        )
        yield GaugeMetricFamily(
            "rinha_event_loop_lag_seconds",
            f"How late the last {LAG_INTERVAL:g} s timer fired.",
            self._lag.last,
        )
        yield GaugeMetricFamily(
            "rinha_event_loop_lag_max_seconds",
            "The latest a timer fired since the previous scrape.",
            self._lag.take_worst(),
        )

    def _payments(self) -> Iterator[Metric]:
        app, dispatcher = self._app, self._dispatcher
        yield CounterMetricFamily(
            "rinha_payments_accepted",
            "POST /payments answered 202 for a new payment.",
            app.accepted_count,
        )
        refused = CounterMetricFamily(
            "rinha_payments_refused", "POST /payments refused, by reason.", labels=["reason"]
        )
        for reason, count in app.refused_counts.items():
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily(
            "rinha_payments_pending",
            "Payments accepted and not yet confirmed by a processor.",
            dispatcher.pending_count,
        )
        yield GaugeMetricFamily(
            "rinha_payments_held",
            "Pending payments on no processor: held for a failing default, or waiting for a "
            "free slot or the send rate.",
            dispatcher.held_count,
        )

    def _processors(self) -> Iterator[Metric]:
        dispatcher, counts, health = (
            self._dispatcher,
            self._dispatcher.counts,
            self._dispatcher.health,
        )
        per_processor: list[tuple[_Family, str, str, Callable[[str], float]]] = [
            (
                GaugeMetricFamily,
                "rinha_payments_in_flight",
                "Payments taking a slot on the processor, fresh or being settled.",
                dispatcher.in_flight,
            ),
            (
                GaugeMetricFamily,
                "rinha_payments_settling",
                "Payments whose attempt went unanswered, being looked up or re-sent there.",
                lambda name: counts[name].settling,
            ),
            (
                CounterMetricFamily,
                "rinha_payments_confirmed",
                "Payments the processor confirmed and this replica recorded.",
                lambda name: counts[name].confirmed,
            ),
            (
                CounterMetricFamily,
                "rinha_payments_confirmed_cents",
                "Amount of the confirmed payments, in cents.",
                lambda name: counts[name].confirmed_cents,
            ),
            (
                GaugeMetricFamily,
                "rinha_processor_failing",
                "1 while this replica sees the processor failing.",
                lambda name: health[name].failing,
            ),
            (
                GaugeMetricFamily,
                "rinha_processor_announced_delay_seconds",
                "The processor's delay as its last health report announced it.",
                lambda name: health[name].min_response_ms / 1000,
            ),
            (
                CounterMetricFamily,
                "rinha_health_reports",
                "Health reports applied: polled here or pushed by a peer.",
                lambda name: counts[name].health_reports,
            ),
        ]
        for kind, metric, documentation, read in per_processor:
            family = kind(metric, documentation, labels=["processor"])
            for name in self._clients:
                family.add_metric([name], read(name))
            yield family
        attempts = CounterMetricFamily(
            "rinha_processor_attempts",
            "Payments sent to the processor, fresh or re-sent, by outcome.",
            labels=["processor", "outcome"],
        )
        settles = CounterMetricFamily(
            "rinha_settles",
            "Unanswered attempts resolved: stored there, or released as not stored.",
            labels=["processor", "result"],
        )
        for name, client in self._clients.items():
            for outcome, count in client.attempts.items():
                attempts.add_metric([name, outcome.value], count)
            settles.add_metric([name, "stored"], counts[name].settled_stored)
            settles.add_metric([name, "not_stored"], counts[name].settled_not_stored)
        yield attempts
        yield settles


class MetricsServer:
    """`GET /metrics` in the Prometheus text format, on the project's HTTP core."""

    def __init__(
        self,
        app: App,
        dispatcher: Dispatcher,
        clients: dict[str, ProcessorClient],
        journal: Journal | NoJournal,
    ) -> None:
        self._lag = LoopLag()
        self._registry = CollectorRegistry()
        self._registry.register(ServiceCollector(app, dispatcher, clients, journal, self._lag))
        # CPU seconds, resident memory and open descriptors, read from /proc at scrape time.
        ProcessCollector(registry=self._registry)
        self._server = HttpServer(self._handle)

    def _handle(self, request: Request) -> Answer:
        if request.path != METRICS_PATH:
            return NOT_FOUND
        if request.method != b"GET":
            return METHOD_NOT_ALLOWED
        return response(200, self.render(), content_type=_CONTENT_TYPE)

    def render(self) -> bytes:
        """One scrape's text: it runs on the event loop, like any callback."""
        return generate_latest(self._registry)

    async def listen(self, host: str, port: int) -> None:
        await self._server.listen_tcp(host, port)
        self._lag.start()

    async def shutdown(self) -> None:
        self._lag.stop()
        await self._server.shutdown()
