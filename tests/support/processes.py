"""Real processes for the tests: start a command, wait until it answers HTTP, stop it at the end;
one HTTP request; waiting for a condition with a deadline."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    host: str = "127.0.0.1",
) -> Reply:
    """One HTTP request on a fresh connection; `body` that is not bytes is sent as JSON."""
    all_headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=all_headers)
        answer = conn.getresponse()
        return Reply(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


@dataclass
class Process:
    """A child process listening on `port`: `program` (Python unless named) with `args`."""

    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    program: str = sys.executable
    host: str = "127.0.0.1"
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None  # where its stderr goes, appended to; else the test's own

    def start(self, ready_path: str, timeout: float = 15.0) -> Process:
        with contextlib.ExitStack() as opened:
            log = None if self.log is None else opened.enter_context(open(self.log, "ab"))
            self.popen = subprocess.Popen(
                [self.program, *self.args],
                env={**os.environ, **self.env},
                start_new_session=True,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.popen.returncode}")
            try:
                call(self.port, "GET", ready_path, timeout=1.0, host=self.host)
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.args} did not answer on port {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the child's whole process group (its own session): a wrapper such as
        faketime forks the program it runs, which must stop with it."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        os.killpg(self.popen.pid, sig)
        try:
            return self.popen.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Until `condition()` holds; fails after `timeout` saying `what` was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


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
