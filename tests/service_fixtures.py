"""Fixtures that start the service as real processes: one replica (`python -m rinha serve`)
or the whole stack (`python -m rinha up`: HAProxy and three replicas)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.processes import Process, Reply, call, free_port, unix_call

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
def service_factory(fresh_processors: Any, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start a service instance wired to the test processors, with extra CLI options. Its
    default journal lives in this test's own state directory."""
    started: list[Service] = []
    env = {
        "PROCESSOR_DEFAULT_URL": fresh_processors.default.url,
        "PROCESSOR_FALLBACK_URL": fresh_processors.fallback.url,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }

    def start(
        *options: str, default_url: str | None = None, fallback_url: str | None = None
    ) -> Service:
        port = free_port()
        args = ["-m", "rinha", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--health-interval", HEALTH_INTERVAL, *options]
        urls = {}
        if default_url:
            urls["PROCESSOR_DEFAULT_URL"] = default_url
        if fallback_url:
            urls["PROCESSOR_FALLBACK_URL"] = fallback_url
        service = Service(Process(args, port, {**env, **urls}).start(READY_PATH))
        started.append(service)
        return service

    yield start
    for service in started:
        assert service.process.stop() in (0, None), "the service did not stop cleanly"


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()


@pytest.fixture
def cluster(service_factory: Callable[..., Service], tmp_path: Path) -> list[Service]:
    """Three replicas wired as `python -m rinha up` wires them (control sockets, journals,
    replica 1 polling health), each on a TCP port of its own and with no HAProxy in front."""
    names = ["replica-1", "replica-2", "replica-3"]
    paths = {
        name: [str(tmp_path / f"{name}.control"), str(tmp_path / f"{name}.journal")]
        for name in names
    }
    replicas = []
    for index, name in enumerate(names):
        control, journal = paths[name]
        options = ["--control", control, "--journal", journal]
        for other in names:
            if other != name:
                options += ["--peer", *paths[other]]
        if index:
            options.append("--no-health-poll")
        replicas.append(service_factory(*options))
    return replicas


@dataclass
class StackUnderTest:
    """A `python -m rinha up` a test started: its process, the addresses it printed, and the
    calls tests make through its HAProxy."""

    popen: subprocess.Popen[str]
    port: int
    stats_port: int
    replicas: dict[str, str] = field(default_factory=dict)  # name -> unix socket
    metrics_ports: dict[str, int] = field(default_factory=dict)  # replica name -> port

    def pay(self) -> int:
        return self.pay_id()[1]

    def pay_id(self) -> tuple[str, int]:
        correlation_id = str(uuid.uuid4())
        body = {"correlationId": correlation_id, "amount": 19.90}
        return correlation_id, call(self.port, "POST", "/payments", body).status

    def summary(self) -> dict[str, Any]:
        reply = call(self.port, "GET", "/payments-summary")
        assert reply.status == 200, reply
        return reply.json()

    def wait_settled(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (summary := self.summary())["pending"]["totalRequests"]:
            assert time.monotonic() < deadline, summary
            time.sleep(0.05)
        return summary

    def backend_sessions(self) -> dict[str, int]:
        """HAProxy's count of sessions per replica, from its stats CSV."""
        csv = call(self.stats_port, "GET", "/;csv").body.decode()
        header = csv.splitlines()[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in csv.splitlines()[1:] if line]
        return {r["svname"]: int(r["stot"]) for r in rows if r["svname"].startswith("replica")}

    def replica_pid(self, name: str) -> int:
        socket_path = self.replicas[name]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"serve" in cmdline and socket_path.encode() in cmdline:
                    return int(entry.name)
        raise LookupError(name)


def wait_dead(pid: int) -> None:
    """Until the process has exited (a zombie has closed its sockets too)."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + 10
    while status.exists():
        try:
            if "\nState:\tZ" in status.read_text():
                return
        except OSError:
            return
        assert time.monotonic() < deadline
        time.sleep(0.01)


def start_stack(processors: Any) -> StackUnderTest:
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROCESSOR_DEFAULT_URL": processors.default.url,
        "PROCESSOR_FALLBACK_URL": processors.fallback.url,
    }
    command = [sys.executable, "-m", "rinha", "up", "--port", str(port)]
    command += ["--stats-port", str(stats_port)]
    command += ["--metrics-ports", ",".join(str(free_port()) for _ in range(3))]
    popen = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    stack = StackUnderTest(popen, port, stats_port)
    assert popen.stdout is not None
    for line in popen.stdout:
        words = line.split()
        if words and words[0].startswith("replica-"):
            # replica-N  SOCKET  metrics http://127.0.0.1:PORT/metrics
            stack.replicas[words[0]] = words[1]
            metrics_port = urlsplit(words[3]).port
            assert metrics_port is not None, line
            stack.metrics_ports[words[0]] = metrics_port
        if line.startswith("Ctrl-C"):
            return stack
    raise RuntimeError(f"rinha up exited with {popen.wait()}")


def stop_stack(stack: StackUnderTest) -> int:
    stack.popen.send_signal(signal.SIGINT)
    return stack.popen.wait(60)


@pytest.fixture
def stack(fresh_processors: Any) -> Iterator[StackUnderTest]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    running = start_stack(fresh_processors)
    yield running
    assert stop_stack(running) == 0


def unix_get(socket_path: str, path: str) -> bytes:
    reply = unix_call(socket_path, "GET", path)
    assert reply.status == 200, reply
    return reply.body
