"""`python -m rinha up`: HAProxy and three replicas as one service (issue: one audit wherever
the request lands, one health decider, HAProxy keeps serving when a replica dies)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.processes import call, free_port
from tests.test_audit import run_burst

pytestmark = pytest.mark.skipif(
    not any(Path(p, "haproxy").exists() for p in os.environ["PATH"].split(os.pathsep)),
    reason="haproxy is not installed (apt-get install haproxy)",
)


@dataclass
class Stack:
    popen: subprocess.Popen[str]
    port: int
    stats_port: int
    replicas: dict[str, str] = field(default_factory=dict)  # name -> unix socket

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


def start_stack(processors: Any) -> Stack:
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROCESSOR_DEFAULT_URL": processors.default.url,
        "PROCESSOR_FALLBACK_URL": processors.fallback.url,
    }
    command = [sys.executable, "-m", "rinha", "up", "--port", str(port)]
    command += ["--stats-port", str(stats_port)]
    popen = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    stack = Stack(popen, port, stats_port)
    assert popen.stdout is not None
    for line in popen.stdout:
        words = line.split()
        if words and words[0].startswith("replica-"):
            stack.replicas[words[0]] = words[1]
        if line.startswith("Ctrl-C"):
            return stack
    raise RuntimeError(f"rinha up exited with {popen.wait()}")


def stop_stack(stack: Stack) -> int:
    stack.popen.send_signal(signal.SIGINT)
    return stack.popen.wait(60)


@pytest.fixture
def stack(fresh_processors: Any) -> Iterator[Stack]:
    running = start_stack(fresh_processors)
    yield running
    assert stop_stack(running) == 0


def test_payments_spread_over_every_replica(stack: Stack, fresh_processors: Any) -> None:
    before = stack.backend_sessions()
    for _ in range(60):
        assert stack.pay() == 202
    summary = stack.wait_settled()
    after = stack.backend_sessions()
    assert sorted(after) == ["replica-1", "replica-2", "replica-3"]
    assert all(after[name] > before.get(name, 0) for name in after)
    assert summary["default"]["totalRequests"] == 60
    assert fresh_processors.default.summary()["totalRequests"] == 60


def test_every_replica_answers_the_same_summary(stack: Stack) -> None:
    for _ in range(30):
        stack.pay()
    stack.wait_settled()
    answers = []
    for socket_path in stack.replicas.values():
        answers.append(unix_get(socket_path, "/payments-summary"))
    answers += [call(stack.port, "GET", "/payments-summary").body for _ in range(6)]
    assert len(set(answers)) == 1
    assert b'"default":{"totalRequests":30,' in answers[0]


def unix_get(socket_path: str, path: str) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(socket_path)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def test_audit_exact_through_haproxy_under_load_and_failures(
    stack: Stack, fresh_processors: Any
) -> None:
    accepted, differences, audits = asyncio.run(run_burst(stack, fresh_processors))  # type: ignore[arg-type]
    assert accepted > 0 and audits >= 5
    assert differences == []
    final = stack.wait_settled()
    for name in ("default", "fallback"):
        theirs = getattr(fresh_processors, name).summary()
        assert final[name]["totalRequests"] == theirs["totalRequests"]
        assert final[name]["totalAmount"] == theirs["totalAmount"]


def test_purge_on_any_replica_purges_all(stack: Stack) -> None:
    for _ in range(30):
        stack.pay()
    stack.wait_settled()
    assert call(stack.port, "POST", "/purge-payments").status == 200
    for socket_path in stack.replicas.values():
        assert b'"totalRequests":0,' in unix_get(socket_path, "/payments-summary")
        assert b'"totalRequests":30' not in unix_get(socket_path, "/payments-summary")


def test_a_killed_replica_is_replaced_and_nothing_is_lost(
    stack: Stack, fresh_processors: Any
) -> None:
    fresh_processors.default.set_delay(200)
    answers = [stack.pay_id() for _ in range(30)]
    pid = stack.replica_pid("replica-2")
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    # HAProxy keeps serving: a refused connection is sent to another replica. A request that
    # was already on its way to the dying replica gets a 502: it was never answered 2xx.
    after = [stack.pay_id() for _ in range(60)]
    statuses = [status for _, status in answers + after]
    assert set(statuses) <= {202, 502}
    assert statuses.count(502) <= 3
    assert [status for _, status in after[10:]] == [202] * 50
    # `up` starts the replica again; it resumes from its journal and the audit is whole again.
    deadline = time.monotonic() + 30
    while call(stack.port, "GET", "/payments-summary").status != 200:
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.1)
    final = stack.wait_settled()
    for name in ("default", "fallback"):
        theirs = getattr(fresh_processors, name).summary()
        assert final[name]["totalRequests"] == theirs["totalRequests"]
    # Every payment answered 202 was processed, by exactly one processor.
    for correlation_id, status in answers + after:
        if status == 202:
            found = [
                getattr(fresh_processors, name).admin("GET", f"/payments/{correlation_id}").status
                for name in ("default", "fallback")
            ]
            assert sorted(found) == [200, 404], correlation_id
