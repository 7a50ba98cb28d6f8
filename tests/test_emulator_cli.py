"""`python -m rinha.emulator`: its options, its listeners, its stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid

import pytest

OPTIONS = [
    "--fee", "--port", "--host", "--unix", "--token",
    "--rate-limit-seconds", "--max-in-flight", "--max-queued",
]  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rinha.emulator", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)


def test_help_documents_every_option():
    result = run("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "8001"],  # no fee
        ["--fee", "0.07"],  # nowhere to listen
        ["--fee", "seven", "--port", "8001"],
        ["--fee", "-0.07", "--port", "8001"],
        ["--fee", "0.07", "--port", "99999"],
        ["--fee", "0.07", "--port", "8001", "--max-in-flight", "0"],
        ["--fee", "0.07", "--port", "8001", "--rate-limit-seconds", "soon"],
        ["--fee", "0.07", "--port", "8001", "--bogus"],
    ],
)
def test_bad_option_is_refused_with_exit_code_2(args):
    result = run(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_it_cleanly(processor_factory, signum):
    processor = processor_factory()
    assert processor.process.stop(signum) == 0


def test_unix_socket_listener(processor_factory, tmp_path):
    path = str(tmp_path / "processor.sock")
    processor = processor_factory(unix=path)
    body = json.dumps(
        {"correlationId": str(uuid.uuid4()), "amount": 19.9, "requestedAt": "2025-07-15T12:00:00Z"}
    ).encode()
    request = (
        b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert processor.summary()["totalRequests"] == 1
    assert processor.process.stop() == 0
    assert not os.path.exists(path)
