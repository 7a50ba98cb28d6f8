"""Fixtures that start the service (`python -m rinha serve`) as a real process."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.processes import Process, Reply, call, free_port

# Health reports every 0.2 s keep the tests quick; the emulators' window is as short.
HEALTH_INTERVAL = "0.2"
READY_PATH = "/payments-summary"


class Service:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.port = process.port

    def kill(self) -> None:
        """SIGKILL: no chance to drain or flush anything."""
        assert self.process.stop(signal.SIGKILL) == -signal.SIGKILL

    def restart(self) -> None:
        """Start the same command again, on the same port (after kill() or a stop)."""
        self.process = Process(self.process.args, self.port, self.process.env)
        self.process.start(READY_PATH)

    def pay(self, correlation_id: str | None = None, amount: Any = 19.90) -> Reply:
        body = {"correlationId": correlation_id or str(uuid.uuid4()), "amount": amount}
        return call(self.port, "POST", "/payments", body)

    def summary(self, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
        query = "&".join(f"{k}={v}" for k, v in (("from", from_), ("to", to)) if v)
        reply = call(self.port, "GET", "/payments-summary" + ("?" + query if query else ""))
        assert reply.status == 200, reply
        return reply.json()

    def wait_settled(self, timeout: float = 30.0) -> dict[str, Any]:
        """The summary once nothing is pending any more."""
        deadline = time.monotonic() + timeout
        while True:
            summary = self.summary()
            if summary["pending"]["totalRequests"] == 0:
                return summary
            if time.monotonic() > deadline:
                raise TimeoutError(f"still pending after {timeout} s: {summary}")
            time.sleep(0.05)


@pytest.fixture
def service_factory(fresh_processors: Any) -> Iterator[Callable[..., Service]]:
    """Start a service instance wired to the test processors, with extra CLI options."""
    started: list[Service] = []
    env = {
        "PROCESSOR_DEFAULT_URL": fresh_processors.default.url,
        "PROCESSOR_FALLBACK_URL": fresh_processors.fallback.url,
    }

    def start(*options: str, default_url: str | None = None) -> Service:
        port = free_port()
        args = ["-m", "rinha", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--health-interval", HEALTH_INTERVAL, *options]
        urls = {"PROCESSOR_DEFAULT_URL": default_url} if default_url else {}
        service = Service(Process(args, port, {**env, **urls}).start(READY_PATH))
        started.append(service)
        return service

    yield start
    for service in started:
        assert service.process.stop() in (0, None), "the service did not stop cleanly"


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()
