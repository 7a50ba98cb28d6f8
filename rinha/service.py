"""One service instance: listeners, dispatcher and cluster, started and stopped in order (stop
like uvicorn's `Server.shutdown`: close listeners, drain, cancel at a deadline).

A restarted replica listens before it has read its journal back: that takes time in
proportion to the journal, and the cluster takes it up while the replica answers (or first,
where its shape needs it; rinha/cluster/). The journal is compacted after."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from rinha.app import App
from rinha.cluster import open_cluster
from rinha.config import ServiceConfig
from rinha.delivery import Dispatcher
from rinha.http import HttpServer
from rinha.journal import Journal, NoJournal
from rinha.processor_client import ProcessorClient

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
    journal = (
        NoJournal()
        if config.journal is None
        else Journal(config.journal, fsync=config.journal_fsync)
    )
    journal.open()
    log.info("journal: %s", config.journal or "none (a crash loses what this replica holds)")
    cluster = open_cluster(config.topology, journal, clients, config.health_interval)
    dispatcher = Dispatcher(
        cluster.ledger, clients, journal, config.dispatch, capacity=config.dispatch.buffer_capacity
    )
    taking_up = await cluster.start(dispatcher)
    app = App(dispatcher, cluster)
    dispatcher.start()
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

    recovered = await taking_up
    if recovered.pending or recovered.confirmed_entries:
        log.info(
            "recovered %d confirmed and %d pending payments from %s",
            len(recovered.confirmed_entries),
            len(recovered.pending),
            config.journal,
        )
    try:
        await journal.compact(recovered)
    except OSError as error:
        log.warning("journal not compacted, kept whole: %s", error)
    # Everything made at start-up lives as long as the process: keep it out of the
    # collector's full passes, whose pauses would land on some request's latency.
    gc.freeze()
    await stop.wait()
    await server.shutdown()
    await dispatcher.drain(DRAIN_SECONDS)
    await dispatcher.stop()
    if metrics is not None:
        await metrics.shutdown()
    if dispatcher.pending_count:
        log.warning("stopped with %d payments still pending", dispatcher.pending_count)
    await cluster.close()
    for client in clients.values():
        await client.close()
    journal.close()
