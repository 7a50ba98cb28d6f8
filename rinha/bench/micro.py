"""`python -m rinha.bench`: in-process microbenchmarks of the hot path, then loopback figures.

Each in-process figure is the median over several repeats of the time per operation. The
loopback part runs wrk (when installed) against `rinha serve` and against a minimal
aiohttp.web handler doing the same work, in the same run, with both processors unreachable so
that only the accepting side is measured. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httptools
import uvloop

from rinha.app import App
from rinha.clock import now_ms
from rinha.cluster import Cluster
from rinha.cluster.host import HostCluster
from rinha.config import DispatchSettings, OneHost
from rinha.delivery import Dispatcher
from rinha.http import HttpConnection, HttpServer
from rinha.journal import Journal, NoJournal
from rinha.ledger.embedded import EmbeddedLedger
from rinha.metrics import MetricsServer
from rinha.payments import parse_payment
from rinha.processor_client import ProcessorClient
from rinha.routing import ProcessorView, RoutingState, choose_route

REPEATS = 7
# The dispatcher is never started here; only its accepting side is timed.
SETTINGS = DispatchSettings(
    buffer_capacity=0,
    max_send_rate=1.0,
    settle_after=1.0,
    max_hold=0.0,
    spill_after=1.0,
    stamp_ahead_ms=0,
)
POST_LUA = Path(__file__).resolve().parents[2] / "bench" / "post.lua"


def payment_body() -> bytes:
    return b'{"correlationId":"%s","amount":19.90}' % str(uuid.uuid4()).encode()


def post_request(body: bytes) -> bytes:
    return (
        b"POST /payments HTTP/1.1\r\nHost: localhost:9999\r\nUser-Agent: k6/1.1.0\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def per_op_ns(operation: Callable[[], object], ops: int) -> float:
    """Median nanoseconds per call of `operation` over REPEATS runs of `ops` calls (the
    loop and the call itself, some 50 ns, are included)."""
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for _ in range(ops):
            operation()
        samples.append((time.perf_counter_ns() - start) / ops)
    return statistics.median(samples)


def _deliver_next(connection: HttpConnection, feed: Iterator[bytes]) -> None:
    connection.data_received(next(feed))


class _CountingTransport:
    """Where the benchmarked protocol writes: counts answers, keeps nothing."""

    def __init__(self) -> None:
        self.answers = 0

    def write(self, data: bytes) -> None:
        self.answers += 1

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def lone_replica(journal: Journal | NoJournal, clients: dict[str, ProcessorClient]) -> Cluster:
    """A replica with no peers, never started: only its accepting side is timed."""
    return HostCluster(OneHost(None, (), False, 1), journal, clients, health_interval=5.0)


async def in_process(ops: int) -> list[tuple[str, float]]:
    unreachable = "http://127.0.0.1:9"
    clients = {
        name: ProcessorClient(name, unreachable, timeout=1.0) for name in ("default", "fallback")
    }
    ledger = EmbeddedLedger()

    def fresh_dispatcher() -> Dispatcher:
        # Never started: payments stay in the buffer, so only the accepting side is timed.
        return Dispatcher(ledger, clients, NoJournal(), SETTINGS, capacity=REPEATS * ops + 1)

    bodies = [payment_body() for _ in range(REPEATS * ops)]
    requests = [post_request(body) for body in bodies]
    rows: list[tuple[str, float]] = []

    class _Sink:
        def on_url(self, url: bytes) -> None: ...
        def on_header(self, name: bytes, value: bytes) -> None: ...
        def on_body(self, body: bytes) -> None: ...

    parser = httptools.HttpRequestParser(_Sink())
    feed = iter(requests)
    rows.append(
        (
            "HTTP parse of a POST /payments",
            per_op_ns(lambda: parser.feed_data(next(feed)), ops),
        )
    )

    body_iter = iter(bodies)
    rows.append(
        (
            "validate (parse_payment)",
            per_op_ns(lambda: parse_payment(next(body_iter)), ops),
        )
    )

    dispatcher = fresh_dispatcher()
    payments = iter([parse_payment(body) for body in bodies])
    rows.append(
        (
            "enqueue (Dispatcher.submit)",
            per_op_ns(lambda: dispatcher.submit(next(payments)), ops),
        )
    )

    with tempfile.TemporaryDirectory() as scratch:
        journals: dict[str, tuple[Journal | NoJournal, int]] = {
            "hot path: request bytes in, 202 out": (NoJournal(), ops),
            "  the same, journaled (write)": (Journal(f"{scratch}/w", fsync=False), ops),
            "  the same, journaled (write + fsync)": (Journal(f"{scratch}/f", fsync=True), 200),
        }
        for name, (journal, count) in journals.items():
            journal.open()
            app = App(fresh_dispatcher(), lone_replica(journal, clients))
            connection = HttpConnection(app.handle, HttpServer(app.handle))
            transport = _CountingTransport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            feed = iter(requests)
            rows.append(
                (
                    name,
                    per_op_ns(partial(_deliver_next, connection, feed), count),
                )
            )
            assert transport.answers == REPEATS * count, "every request must have been answered"
            journal.close()

    big = EmbeddedLedger()
    start = now_ms()
    for index in range(100_000):
        big.record(
            str(index), random.choice(("default", "fallback")), start + index // 10, 1990, 0
        )
    windows = [
        (start + random.randint(0, 5000), start + random.randint(5000, 10_000))
        for _ in range(1000)
    ]
    window_iter = iter(windows * REPEATS)
    rows.append(
        (
            "summary over 100k payments",
            per_op_ns(lambda: big.totals(*next(window_iter)), 1000),
        )
    )

    app = App(dispatcher, lone_replica(NoJournal(), clients))
    metrics = MetricsServer(app, dispatcher, clients, NoJournal())
    rows.append(("a metrics scrape (/metrics body)", per_op_ns(metrics.render, 200)))

    state = RoutingState(ProcessorView(True, False), ProcessorView(False, False), True, False)
    rows.append(("routing decision", per_op_ns(lambda: choose_route(state), ops)))
    for client in clients.values():
        await client.close()
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def run_wrk(port: int, seconds: int) -> tuple[float, str, str]:
    """requests/s, p50 and p99 of `wrk -t1 -c50 --latency` POSTing fresh payments."""
    command = [
        "wrk",
        "-t1",
        "-c50",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(POST_LUA),
        f"http://127.0.0.1:{port}",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise RuntimeError(f"{non_2xx.group(1)} requests were not accepted:\n{output}")
    return rate, p50, p99


def loopback(seconds: int) -> list[tuple[str, float, str, str]]:
    unreachable = {
        "PROCESSOR_DEFAULT_URL": "http://127.0.0.1:9",
        "PROCESSOR_FALLBACK_URL": "http://127.0.0.1:9",
    }
    servers = {
        "rinha serve": [
            sys.executable,
            "-m",
            "rinha",
            "serve",
            "--host",
            "127.0.0.1",
            "--buffer-capacity",
            "10000000",
            "--no-journal",  # like the baseline; nothing here will ever be delivered
            # Served as `up` serves it, though nothing scrapes it here.
            "--metrics-port",
            str(free_port()),
            "--port",
        ],
        "aiohttp.web baseline": [sys.executable, "-m", "rinha.bench.baseline", "--port"],
    }
    rows = []
    for name, command in servers.items():
        port = free_port()
        env = {**__import__("os").environ, **unreachable}
        process = subprocess.Popen([*command, str(port)], env=env, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port)
            rows.append((name, *run_wrk(port, seconds)))
        finally:
            process.terminate()
            process.wait(30)
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rinha.bench",
        description="Microbenchmarks of the hot path, then loopback figures with wrk. "
        "`python -m rinha.bench k6 --help` for the official scenarios.",
    )
    parser.parse_args(argv)
    ops, wrk_seconds = 20_000, 10
    print(f"in-process, median of {REPEATS} repeats")
    print(f"{'operation':<40} {'per op':>12}")
    for name, ns in uvloop.run(in_process(ops)):
        figure = f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"
        print(f"{name:<40} {figure:>12}")
    if shutil.which("wrk") is None:
        print("\nwrk not installed (apt-get install wrk): loopback figures skipped")
        return
    print(f"\nloopback, wrk -t1 -c50 -d{wrk_seconds}s, POST /payments, processors unreachable")
    print(f"{'server':<40} {'requests/s':>12} {'p50':>10} {'p99':>10}")
    for name, rate, p50, p99 in loopback(wrk_seconds):
        print(f"{name:<40} {rate:>12.0f} {p50:>10} {p99:>10}")


if __name__ == "__main__":
    main(sys.argv[1:])
