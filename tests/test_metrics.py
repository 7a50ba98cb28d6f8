"""Watching a running stack (issue 14): every replica serves Prometheus metrics on a port of its
own, never the public one; HAProxy serves its exporter on its stats address; a real Prometheus
scraping a stack through a burst of payments sees what the processors confirmed."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.clients import Service, StackUnderTest
from tests.support.metrics import Scrape, scrape, value
from tests.support.processes import Process, call, free_port
from tests.support.senders import burst


def wait_scrape(port: int, ready: Callable[[Scrape], bool], timeout: float = 10.0) -> Scrape:
    """Scrape until `ready` holds for what was scraped."""
    deadline = time.monotonic() + timeout
    while not ready(samples := scrape(port)):
        assert time.monotonic() < deadline, samples
        time.sleep(0.05)
    return samples


def listening_hosts(port: int) -> set[str]:
    """The IPv4 addresses something listens on at `port`, from the kernel's socket table."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            # The kernel prints the address as a number in the machine's byte order.
            hosts.add(socket.inet_ntoa(struct.pack("=I", int(address, 16))))
    return hosts


def test_a_replica_counts_what_it_accepts_refuses_holds_and_confirms(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    port, journal = free_port(), tmp_path / "journal"
    options = ("--metrics-port", str(port), "--journal", str(journal), "--buffer-capacity", "3")
    service = service_factory(*options)
    assert call(service.port, "GET", "/metrics").status == 404
    assert listening_hosts(port) == {"127.0.0.1"}
    default, fallback = fresh_processors.default, fresh_processors.fallback
    default.set_delay(100)
    for processor in (default, fallback):
        processor.set_failure(True)
    # Both failing: every payment is held until the buffer is full.
    assert [service.pay().status for _ in range(4)] == [202, 202, 202, 429]
    assert service.pay(amount="19.90").status == 422
    held = wait_scrape(
        port,
        lambda s: (
            value(s, "rinha_processor_failing", processor="default") == 1
            and value(s, "rinha_processor_failing", processor="fallback") == 1
            and value(s, "rinha_processor_announced_delay_seconds", processor="default") == 0.1
        ),
    )
    in_flight = sum(held["rinha_payments_in_flight"].values())  # a probe may be out
    assert value(held, "rinha_payments_pending") == 3
    assert value(held, "rinha_payments_held") + in_flight == 3
    assert value(held, "rinha_payments_refused_total", reason="buffer_full") == 1
    assert value(held, "rinha_payments_refused_total", reason="bad_input") == 1
    for processor in (default, fallback):
        processor.set_failure(False)
    service.wait_settled()
    after = scrape(port)
    confirmed = default.summary()
    assert confirmed["totalRequests"] == 3
    assert value(after, "rinha_payments_accepted_total") == 3
    assert value(after, "rinha_payments_confirmed_total", processor="default") == 3
    assert value(after, "rinha_payments_confirmed_total", processor="fallback") == 0
    cents = value(after, "rinha_payments_confirmed_cents_total", processor="default")
    assert cents == round(confirmed["totalAmount"] * 100)
    attempts = "rinha_processor_attempts_total"
    assert value(after, attempts, processor="default", outcome="confirmed") == 3
    assert value(after, attempts, processor="default", outcome="refused") >= 1
    assert value(after, "rinha_payments_pending") == value(after, "rinha_payments_held") == 0
    assert value(after, "rinha_processor_failing", processor="default") == 0
    assert value(after, "rinha_health_reports_total", processor="default") >= 1
    assert value(after, "rinha_journal_bytes") == journal.stat().st_size
    assert value(after, "rinha_build_info", version=version("rinha")) == 1
    assert value(after, "rinha_event_loop_lag_seconds") >= 0
    assert value(after, "rinha_event_loop_lag_max_seconds") >= 0
    assert value(after, "process_resident_memory_bytes") > 0


def test_an_unanswered_attempt_is_seen_settling_then_settled(
    service_factory: Callable[..., Service], processor_factory: Callable[..., Any]
) -> None:
    # A processor of its own: the re-sends still waiting in its delay at the end would store
    # the payment again in a shared one, after the next test purged it.
    processor = processor_factory(fee="0.07")
    port = free_port()
    options = ("--metrics-port", str(port), "--processor-timeout", "0.3")
    service = service_factory(*options, default_url=processor.url)
    # The processor stores it after 2 s, long after our client gave up on the answer.
    processor.set_delay(2000)
    assert service.pay().status == 202
    settling = wait_scrape(
        port, lambda s: value(s, "rinha_payments_settling", processor="default") == 1
    )
    assert value(settling, "rinha_payments_in_flight", processor="default") == 1
    assert value(
        settling, "rinha_processor_attempts_total", processor="default", outcome="unknown"
    )
    service.wait_settled()
    settled = scrape(port)
    assert value(settled, "rinha_payments_settling", processor="default") == 0
    assert value(settled, "rinha_settles_total", processor="default", result="stored") == 1
    assert value(settled, "rinha_settles_total", processor="default", result="not_stored") == 0
    assert value(settled, "rinha_payments_confirmed_total", processor="default") == 1


def prometheus_config(stack: StackUnderTest) -> str:
    replicas = ", ".join(f"'127.0.0.1:{port}'" for port in stack.metrics_ports.values())
    return f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rinha
    static_configs: [{{targets: [{replicas}]}}]
  - job_name: haproxy
    static_configs: [{{targets: ['127.0.0.1:{stack.stats_port}']}}]
"""


def query(prometheus: Process, promql: str) -> dict[str, float]:
    """An instant query's vector, keyed by its `processor` label ("" where it has none)."""
    reply = call(prometheus.port, "GET", "/api/v1/query?" + urlencode({"query": promql}))
    assert reply.status == 200, reply
    answer = reply.json()["data"]["result"]
    return {series["metric"].get("processor", ""): float(series["value"][1]) for series in answer}


def test_prometheus_scrapes_what_the_processors_confirmed(
    stack: StackUnderTest, fresh_processors: Any, tmp_path: Path
) -> None:
    program = shutil.which("prometheus")
    if program is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(stack))
    port = free_port()
    args = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}"]
    args += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    prometheus = Process(args, port, program=program).start("/-/ready")
    try:
        found = asyncio.run(burst(fresh_processors, lambda index: [stack.url], [stack.url]))
        accepted = len(found.accepted)
        assert found.differences == []
        stack.wait_settled()
        theirs = {
            name: getattr(fresh_processors, name).summary() for name in ("default", "fallback")
        }
        counts = {name: float(summary["totalRequests"]) for name, summary in theirs.items()}
        cents = {name: round(summary["totalAmount"] * 100) for name, summary in theirs.items()}
        assert counts["default"] > 0
        # Scraped once a second, and a scrape on a loaded machine may time out: wait until
        # every target's latest scrape succeeded and shows the end state.
        deadline = time.monotonic() + 30
        while (
            query(prometheus, "count(up == 1)") != {"": 4}
            or query(prometheus, "sum by (processor) (rinha_payments_confirmed_total)") != counts
        ):
            assert time.monotonic() < deadline, query(prometheus, "rinha_payments_confirmed_total")
            time.sleep(0.2)
        scraped_cents = query(
            prometheus, "sum by (processor) (rinha_payments_confirmed_cents_total)"
        )
        assert scraped_cents == cents
        assert query(prometheus, "sum(rinha_payments_accepted_total)") == {"": accepted}
        answered = 'sum(haproxy_backend_http_responses_total{proxy="replicas", code="2xx"})'
        assert query(prometheus, answered)[""] >= accepted
    finally:
        prometheus.stop()
