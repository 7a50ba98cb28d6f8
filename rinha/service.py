"""One service instance: listeners, dispatcher, ledger and health poller, started and stopped
in order (stop like uvicorn's `Server.shutdown`: close listeners, drain, cancel at a deadline)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from rinha.app import App
from rinha.cluster import Peers, PeerUnavailable, poll_health
from rinha.config import ServiceConfig
from rinha.dispatcher import Dispatcher
from rinha.http import HttpServer
from rinha.journal import Journal, NoJournal
from rinha.ledger import open_ledger
from rinha.processor_client import HealthReport, ProcessorClient

log = logging.getLogger("rinha")
# At a stop, how long payments in flight get to finish; the journal keeps the rest.
DRAIN_SECONDS = 5.0


async def run_service(config: ServiceConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    clients = {
        name: ProcessorClient(name, url, timeout=config.processor_timeout)
        for name, url in config.processor_urls.items()
    }
    ledger = open_ledger(config.ledger_url)
    journal = (
        NoJournal()
        if config.journal is None
        else Journal(config.journal, fsync=config.journal_fsync)
    )
    recovered = journal.recover()
    log.info("journal: %s", config.journal or "none (a crash loses what this replica holds)")
    for entry in recovered.confirmed_entries:
        ledger.record(
            entry.correlation_id,
            entry.processor,
            entry.requested_at_ms,
            entry.cents,
            entry.accepted_ms,
        )
    dispatcher = Dispatcher(
        ledger,
        clients,
        journal,
        config.dispatch,
        capacity=config.dispatch.buffer_capacity + len(recovered.pending),
    )
    peers = Peers(config.peers) if config.peers else None
    if recovered.pending or recovered.confirmed_entries:
        log.info(
            "recovered %d confirmed and %d pending payments from %s",
            len(recovered.confirmed_entries),
            len(recovered.pending),
            config.journal,
        )
    store = None
    if config.ledger_url:
        # Imported only with a store: a replica without one loads no pymongo.
        from rinha.ledger.mongodb import MongoLedger
        from rinha.store import Store

        assert isinstance(ledger, MongoLedger)
        store = Store(
            ledger, dispatcher, clients, journal, recovered.known_ids, config.health_interval
        )
        await store.start(recovered)
    else:
        dispatcher.restore(list(recovered.pending.values()))
    app = App(dispatcher, ledger, journal, recovered.known_ids, peers=peers, store=store)

    started_at = loop.time()

    async def publish(reports: dict[str, HealthReport]) -> None:
        for name, report in reports.items():
            dispatcher.apply_health(name, report)
        if peers is not None:
            try:
                await peers.push_health(reports)
            except PeerUnavailable as error:
                # The peers start alongside this replica; one still starting gets the next
                # report, one interval later.
                if loop.time() - started_at > config.health_interval:
                    log.warning("health report not delivered to every peer: %s", error)

    dispatcher.start()
    poller = None
    if config.poll_health and store is None:  # with a store, the store elects the poller
        poller = loop.create_task(poll_health(clients, config.health_interval, publish))
    follower = loop.create_task(peers.follow()) if peers is not None else None
    control = HttpServer(app.handle_control)
    if config.control is not None:
        await control.listen_unix(config.control)
    server = HttpServer(app.handle)
    if config.port is not None:
        await server.listen_tcp(config.host, config.port)
    if config.unix is not None:
        await server.listen_unix(config.unix)
    metrics = None
    if config.metrics_port is not None:
        # Imported only when asked for: a replica without metrics loads none of it.
        from rinha.metrics import MetricsServer

        metrics = MetricsServer(app, dispatcher, clients, journal)
        await metrics.listen(config.metrics_host, config.metrics_port)

    # Everything made at start-up lives as long as the process: keep it out of the
    # collector's full passes, whose pauses would land on some request's latency.
    gc.freeze()
    await stop.wait()
    await server.shutdown()
    await dispatcher.drain(DRAIN_SECONDS)
    for task in (poller, follower):
        if task is not None:
            task.cancel()
    await dispatcher.stop()
    await control.shutdown()
    if metrics is not None:
        await metrics.shutdown()
    if dispatcher.pending_count:
        log.warning("stopped with %d payments still pending", dispatcher.pending_count)
    if store is not None:
        await store.close()
    for client in clients.values():
        await client.close()
    if peers is not None:
        await peers.close()
    await ledger.close()
    journal.close()
