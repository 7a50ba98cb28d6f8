"""`python -m rinha`: every option documented, a bad one refused with a clear message and no
traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.processes import free_port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rinha", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_serve_help_lists_every_option() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    for option in (
        "--port",
        "--unix",
        "--journal",
        "--max-in-flight",
        "--max-hold",
        "--spill-after",
        "--stamp-ahead-ms",
        "--processor-timeout",
        "--settle-after",
        "--metrics-port",
        "--metrics-host",
    ):
        assert option in result.stdout


def test_serve_help_groups_the_options_by_what_they_set() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    groups = ("where it listens", "what survives a crash", "replicas on one host", "delivery")
    for group in groups:
        assert group in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--settle-after", "15", "--processor-timeout", "15"),
        ("--settle-after", "5"),  # below the default processor timeout, 15 s
    ],
)
def test_a_settle_time_within_the_processor_timeout_is_refused(args: tuple[str, ...]) -> None:
    """A payment released to another processor while its first attempt may still be stored
    would be charged twice."""
    result = run("serve", "--no-journal", *args)
    assert result.returncode == 2
    assert "--settle-after must be above --processor-timeout" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("serve", "--max-in-flight", "0"),
        ("serve", "--max-send-rate", "-1"),
        ("serve", "--port", "http"),
        ("up", "--fees", "cheap"),
        ("up", "--processor-ports", "8001"),
        ("up", "--metrics-ports", "9101,9102"),
        ("serve", "--metrics-port", "0"),
        ("serve", "--stamp-ahead-ms", "-1"),
        ("nonsense",),
    ],
)
def test_bad_options_are_refused_without_a_traceback(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_ledger_url_is_refused() -> None:
    result = run("serve", env={**os.environ, "RINHA_LEDGER": "redis://nowhere"})
    assert result.returncode == 2
    assert "RINHA_LEDGER" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "up"])
def test_a_port_in_use_is_reported(command: str) -> None:
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        others = [] if command == "serve" else ["--stats-port", str(free_port())]
        if command == "up":
            others += ["--processor-ports", f"{free_port()},{free_port()}"]
        result = run(command, "--port", str(port), *others)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(port) in result.stderr or "address already in use" in result.stderr.lower()


def test_up_checks_the_replicas_options_before_starting_anything() -> None:
    result = run("up", "--port", str(free_port()), "--", "--max-in-flight", "0")
    assert result.returncode == 2
    assert "--max-in-flight" in result.stderr and "Traceback" not in result.stderr
    assert "rinha is up" not in result.stdout
