"""The service's two cluster shapes, as real processes, and what the second one needs.

- one host: three replicas wired as `python -m rinha up` wires them (rinha/stack.py): each
  with a control socket and a journal, naming the others' as peers, replica 1 alone polling
  the processors' health;
- several machines: three replicas that share nothing but the store (`RINHA_LEDGER`), each
  on an address of its own (127.0.0.11–13) with a journal in a directory of its own.

No mongod can be installed here, so the store is a stand-in, a fake by necessity: SecantusDB
(`secantusd-py`), a MongoDB wire-protocol server over WiredTiger. It is found through env
SECANTUSD, then PATH, then /opt/secantus/bin (install: `python -m venv /opt/secantus &&
/opt/secantus/bin/pip install SecantusDB==0.7.0b3`). RINHA_TEST_MONGO_URL names a real MongoDB
to use instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pymongo
from pymongo.errors import PyMongoError

from tests.support.clients import Client, Service, start_service
from tests.support.processes import free_port, wait_for

HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "haproxy" / "haproxy.cfg"
REPLICAS = ("replica-1", "replica-2", "replica-3")
STORE_HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
STAND_IN_VENV = Path("/opt/secantus/bin/secantusd-py")


def start_host_cluster(
    directory: Path, env: dict[str, str], *options: str, metrics: bool = False
) -> list[Service]:
    """Three replicas of one host, each on a TCP port of its own, with no HAProxy in front;
    `options` are given to each. Their control sockets and journals are in `directory`."""
    paths = {
        name: (directory / f"{name}.control", directory / f"{name}.journal") for name in REPLICAS
    }
    replicas = []
    for index, name in enumerate(REPLICAS):
        control, journal = paths[name]
        wiring = ["--control", str(control)]
        for other in REPLICAS:
            if other != name:
                wiring += ["--peer", *map(str, paths[other])]
        if index:
            wiring.append("--no-health-poll")
        replicas.append(
            start_service(*wiring, *options, env=env, journal=journal, metrics=metrics)
        )
    return replicas


def start_store_cluster(
    url: str,
    directory: Path,
    env: dict[str, str],
    *options: str,
    metrics: bool = False,
    clock_ahead: dict[int, float] | None = None,
) -> list[Service]:
    """Three replicas that meet in the store at `url`, each on an address of its own with a
    journal in a directory of its own under `directory`; `options` are given to each;
    `clock_ahead` sets replica N's wall clock that many seconds ahead."""
    return [
        start_service(
            *options,
            env={**env, "RINHA_LEDGER": url},
            host=host,
            journal=directory / f"host-{index}" / "journal",
            metrics=metrics,
            clock_ahead=(clock_ahead or {}).get(index),
        )
        for index, host in enumerate(STORE_HOSTS, 1)
    ]


@contextmanager
def balancer(replicas: list[Service]) -> Iterator[Client]:
    """HAProxy (haproxy/haproxy.cfg) in front of `replicas` over TCP."""
    haproxy = shutil.which("haproxy")
    assert haproxy is not None, "haproxy is not installed (apt-get install haproxy)"
    port, stats_port = free_port(), free_port()
    env = {
        **os.environ,
        "RINHA_BIND": f"127.0.0.1:{port}",
        "RINHA_STATS_BIND": f"127.0.0.1:{stats_port}",
    }
    for index, replica in enumerate(replicas, 1):
        env[f"RINHA_REPLICA_{index}"] = f"{replica.host}:{replica.port}"
    popen = subprocess.Popen([haproxy, "-db", "-f", str(HAPROXY_CONFIG)], env=env)
    client = Client(port)

    def answers() -> bool:
        try:
            return client.call("GET", "/payments-summary").status == 200
        except OSError:
            return False

    try:
        wait_for(answers, "haproxy answering", timeout=10)
        yield client
    finally:
        popen.terminate()
        popen.wait(10)


def run_name(replica: Service) -> str:
    """A store replica's name in the store for this run (its lease's `_id`), from the
    journal's last `I` line."""
    assert replica.journal is not None
    lines = replica.journal.read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith("I ")][-1]


def stop_all(replicas: list[Service]) -> None:
    for replica in replicas:
        replica.process.stop()


# The store


def stand_in_executable() -> str | None:
    named = os.environ.get("SECANTUSD") or shutil.which("secantusd-py")
    if named:
        return named
    return str(STAND_IN_VENV) if STAND_IN_VENV.exists() else None


@dataclass
class StandIn:
    """A SecantusDB server on a loopback port, which a test may stop and start again."""

    executable: str
    storage: str  # a directory kept across restarts, or ":memory:"
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> StandIn:
        command = [self.executable, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--storage-path", self.storage, "--standalone", "--log-level", "WARNING"]
        self.popen = subprocess.Popen(command)
        client: Any = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=200)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return self
                except PyMongoError:
                    if self.popen.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{command} did not start") from None
        finally:
            client.close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def mongo_skip_reason() -> str | None:
    if os.environ.get("RINHA_TEST_MONGO_URL") or stand_in_executable():
        return None
    return (
        "no MongoDB: set RINHA_TEST_MONGO_URL, or install the stand-in: python -m venv "
        "/opt/secantus && /opt/secantus/bin/pip install SecantusDB==0.7.0b3"
    )


def with_database(url: str, name: str) -> str:
    """`url` naming database `name`, its options kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))
