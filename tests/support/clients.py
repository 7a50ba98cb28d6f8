"""Clients of the processes under test: our public routes (`Client`), on one replica
(`Service`) or through `python -m rinha up` (`StackUnderTest`), and the emulated processors
(`EmulatedProcessor`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.support.processes import Process, Reply, call, free_port

# Health reports every 0.2 s keep the tests quick; the emulators' window is as short.
HEALTH_INTERVAL = "0.2"
READY_PATH = "/payments-summary"


class Client:
    """Our three public routes at one address: a replica, or HAProxy in front of several."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        return call(self.port, method, path, body, host=self.host)

    def pay(self, correlation_id: str | None = None, amount: Any = 19.90) -> Reply:
        body = {"correlationId": correlation_id or str(uuid.uuid4()), "amount": amount}
        return self.call("POST", "/payments", body)

    def summary(self, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
        query = urlencode({k: v for k, v in (("from", from_), ("to", to)) if v})
        reply = self.call("GET", "/payments-summary" + ("?" + query if query else ""))
        assert reply.status == 200, reply
        return reply.json()

    def purge(self) -> None:
        reply = self.call("POST", "/purge-payments")
        assert reply.status == 200, reply

    def wait_settled(self, timeout: float = 30.0) -> dict[str, Any]:
        """The summary once nothing is pending any more."""
        deadline = time.monotonic() + timeout
        while (summary := self.summary())["pending"]["totalRequests"]:
            assert time.monotonic() < deadline, f"still pending after {timeout} s: {summary}"
            time.sleep(0.05)
        return summary


class Service(Client):
    """One replica, `python -m rinha serve`, as a child process of the test."""

    def __init__(
        self, process: Process, journal: Path | None = None, metrics_port: int | None = None
    ) -> None:
        super().__init__(process.port, process.host)
        self.process = process
        self.journal = journal
        self.metrics_port = metrics_port

    @property
    def alive(self) -> bool:
        return self.process.popen is not None and self.process.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to drain or flush anything."""
        assert self.process.stop(signal.SIGKILL) == -signal.SIGKILL

    def restart(self) -> None:
        """Start the same command again, on the same address (after kill() or a stop)."""
        self.process = Process(
            self.process.args, self.port, self.process.env, self.process.program, self.host
        )
        self.process.start(READY_PATH)


def start_service(
    *options: str,
    env: dict[str, str],
    host: str = "127.0.0.1",
    journal: Path | None = None,
    metrics: bool = False,
    clock_ahead: float | None = None,
) -> Service:
    """`python -m rinha serve` on a free port of `host`, health polled every 0.2 s; with
    `metrics`, serving them on a free port of 127.0.0.1; with `clock_ahead`, its wall clock
    that many seconds ahead, under libfaketime (`faketime` on PATH)."""
    port = free_port(host)
    args = ["-m", "rinha", "serve", "--host", host, "--port", str(port)]
    args += ["--health-interval", HEALTH_INTERVAL, *options]
    if journal is not None:
        args += ["--journal", str(journal)]
    metrics_port = free_port() if metrics else None
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    process = Process(args, port, env, host=host)
    if clock_ahead is not None:
        faketime = shutil.which("faketime")
        assert faketime is not None, "faketime is not installed (apt-get install faketime)"
        process.program = faketime
        process.args = ["-f", f"+{clock_ahead}s", sys.executable, *args]
        process.env = {**env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return Service(process.start(READY_PATH), journal, metrics_port)


class StackUnderTest(Client):
    """A `python -m rinha up` a test started: its process, the addresses it printed, and the
    calls tests make through its HAProxy (on `port`, in front of three replicas on unix
    sockets)."""

    def __init__(self, popen: subprocess.Popen[str], port: int, stats_port: int) -> None:
        super().__init__(port)
        self.popen = popen
        self.stats_port = stats_port
        self.replicas: dict[str, str] = {}  # name -> unix socket
        self.metrics_ports: dict[str, int] = {}  # replica name -> port

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


def start_stack(processors: Processors) -> StackUnderTest:
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


@dataclass
class EmulatedProcessor:
    process: Process
    token: str = "123"

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        """An /admin request carrying the token."""
        return call(self.port, method, path, body, headers={"X-Rinha-Token": self.token})

    def set_delay(self, ms: int) -> None:
        reply = self.admin("PUT", "/admin/configurations/delay", {"delay": ms})
        assert reply.status == 200, reply

    def set_failure(self, failing: bool) -> None:
        reply = self.admin("PUT", "/admin/configurations/failure", {"failure": failing})
        assert reply.status == 200, reply

    def purge(self) -> None:
        reply = self.admin("POST", "/admin/purge-payments")
        assert reply.status == 200, reply

    def summary(self, from_: str | None = None, to: str | None = None) -> Any:
        query = urlencode({k: v for k, v in (("from", from_), ("to", to)) if v is not None})
        reply = self.admin("GET", "/admin/payments-summary" + (f"?{query}" if query else ""))
        assert reply.status == 200, reply
        return reply.json()

    def has(self, correlation_id: str) -> bool:
        """Whether this processor stored the payment."""
        return self.admin("GET", f"/payments/{correlation_id}").status == 200

    def health_calls(self) -> dict[str, int]:
        """The health calls it answered and refused so far (the emulator's own route)."""
        return self.admin("GET", "/admin/health-calls").json()

    def in_flight(self) -> int:
        """Payments received and not answered yet, queued ones included (the emulator's own
        route)."""
        counts = self.admin("GET", "/admin/payments-in-flight").json()
        return int(counts["inFlight"] + counts["queued"])

    def pay(
        self,
        correlation_id: str | None = None,
        amount: float = 19.90,
        requested_at: str = "2025-07-15T12:34:56.000Z",
    ) -> Reply:
        """POST /payments as the service sends it; a fresh correlationId unless given."""
        payment = {
            "correlationId": correlation_id or str(uuid.uuid4()),
            "amount": amount,
            "requestedAt": requested_at,
        }
        return call(self.port, "POST", "/payments", payment)

    def reject(self, correlation_ids: list[str]) -> None:
        """Answer 400 to these payments, whatever else (the emulator's own switch)."""
        body = {"correlationIds": correlation_ids}
        assert self.admin("PUT", "/admin/configurations/rejected-ids", body).status == 204

    def reset(self) -> None:
        self.set_delay(0)
        self.set_failure(False)
        self.reject([])
        self.purge()


@dataclass
class Processors:
    default: EmulatedProcessor
    fallback: EmulatedProcessor

    def stored(self) -> tuple[int, int]:
        """How many payments the default and the fallback hold."""
        return self.default.summary()["totalRequests"], self.fallback.summary()["totalRequests"]


def start_processor(**options: Any) -> EmulatedProcessor:
    """Start `python -m rinha.emulator` on a free port (unless `port=` is given)."""
    options = {"fee": "0.05", "port": free_port(), **options}
    args = ["-m", "rinha.emulator"]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    process = Process(args, options["port"]).start("/")  # any answer, even 404, means ready
    return EmulatedProcessor(process, token=str(options.get("token", "123")))
