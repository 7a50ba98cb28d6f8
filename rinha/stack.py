"""`python -m rinha up`: the whole stack on one machine, with no Docker and no database.

HAProxy on the public port reaches three replicas over unix sockets (haproxy/haproxy.cfg);
replica 1 polls the processors' health and pushes it to the others; each replica serves its
metrics on a loopback port of its own, HAProxy its own beside its stats page; a replica that
dies is started again and resumes from its journal. Unless processor URLs are given, two
processor emulators run beside them with the fees of the chosen scenario. Children start in
dependency order, each waited for until it answers, and stop in reverse order. With
`RINHA_LEDGER` naming a MongoDB store (one already running), the replicas meet in the store
instead (rinha/cluster/store/): no peers, no control sockets, and the store elects the poller.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "haproxy" / "haproxy.cfg"
FEES = {"final": ("0.07", "0.10"), "preview": ("0.05", "0.15")}
REPLICAS = 3
METRICS_PORTS = (9101, 9102, 9103)  # replica-1 … replica-3
START_TIMEOUT = 20.0


class StackError(Exception):
    """The stack cannot start; the message says why and what to do."""


def add_port_options(parser: argparse.ArgumentParser) -> None:
    """The stack's ports, for `up` and for the bench that starts it."""
    parser.add_argument("--port", type=int, default=9999, help="public port (default %(default)s)")
    parser.add_argument(
        "--stats-port", type=int, default=9998, help="HAProxy stats page (default %(default)s)"
    )
    parser.add_argument(
        "--processor-ports",
        type=_port_pair,
        default=(8001, 8002),
        metavar="DEFAULT,FALLBACK",
        help="emulators' ports (default 8001,8002)",
    )


def add_up_options(parser: argparse.ArgumentParser) -> None:
    """What starting a stack takes: ports, the emulators' fees, cgroups (`up`, and the bench's
    floor stack)."""
    add_port_options(parser)
    parser.add_argument(
        "--fees",
        choices=tuple(FEES),
        default="final",
        help="emulators' fees: final 7%%/10%%, preview 5%%/15%% (default %(default)s)",
    )
    parser.add_argument(
        "--cgroups",
        type=_cgroups,
        default={},
        metavar="JSON",
        help='start children inside existing cgroup v1 directories, e.g. {"haproxy": '
        '["/sys/fs/cgroup/cpu/x", "/sys/fs/cgroup/memory/x"]} (python -m rinha.bench '
        "k6 --limits contest)",
    )


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """Where `up`'s replicas serve their metrics (the floor stack's processes serve none)."""
    parser.add_argument(
        "--metrics-ports",
        type=_replica_ports,
        default=METRICS_PORTS,
        metavar="PORT,PORT,PORT",
        help="each replica's Prometheus metrics port, on 127.0.0.1 (default "
        f"{','.join(map(str, METRICS_PORTS))})",
    )


def _cgroups(text: str) -> dict[str, tuple[str, ...]]:
    try:
        given = json.loads(text)
        return {str(name): tuple(str(path) for path in paths) for name, paths in given.items()}
    except (ValueError, AttributeError, TypeError):
        raise argparse.ArgumentTypeError(
            "expected a JSON object of child name to a list of directories"
        ) from None


def _ports(text: str, count: int, example: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(part) for part in text.split(","))
    except ValueError:
        ports = ()
    if len(ports) != count:
        raise argparse.ArgumentTypeError(f"expected {count} ports, e.g. {example}")
    return ports


def _port_pair(text: str) -> tuple[int, int]:
    default, fallback = _ports(text, 2, "8001,8002")
    return default, fallback


def _replica_ports(text: str) -> tuple[int, ...]:
    return _ports(text, REPLICAS, ",".join(map(str, METRICS_PORTS)))


def answers_http(address: int | str) -> bool:
    """True when something speaks HTTP on this TCP port (int) or unix socket (str)."""
    family = socket.AF_INET if isinstance(address, int) else socket.AF_UNIX
    target = ("127.0.0.1", address) if isinstance(address, int) else address
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(target)
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: stack\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


@dataclass
class Child:
    name: str
    command: list[str]
    address: int | str
    env: Mapping[str, str] = field(default_factory=dict)
    cgroups: tuple[str, ...] = ()  # cgroup v1 directories the child starts in
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        try:
            self.popen = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                # `up` runs no threads, so the fork-then-Python preexec_fn is safe here.
                preexec_fn=self._join_cgroups if self.cgroups else None,  # noqa: PLW1509
            )
        except subprocess.SubprocessError:
            raise StackError(f"{self.name} could not join its cgroups {self.cgroups}") from None

    def _join_cgroups(self) -> None:
        # Runs in the forked child before exec, so the limits hold from its first instruction.
        for directory in self.cgroups:
            with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))

    def wait_ready(self, deadline: float) -> None:
        assert self.popen is not None
        while not answers_http(self.address):
            if self.popen.poll() is not None:
                raise StackError(f"{self.name} exited with status {self.popen.returncode}")
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass(frozen=True, slots=True)
class StackOptions:
    port: int
    stats_port: int
    fees: str
    processor_ports: tuple[int, int]
    processor_urls: dict[str, str] | None  # given: no emulators are started
    run_dir: Path
    cgroups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # child name -> dirs
    serve_options: tuple[str, ...] = ()  # added to every replica's `serve` command
    metrics_ports: tuple[int, ...] = ()  # one per replica; none: no metrics
    shared_store: bool = False  # RINHA_LEDGER is set: the replicas meet in the store


def plan(options: StackOptions) -> list[Child]:
    """Every child of the stack, in start order."""
    python = sys.executable
    children: list[Child] = []
    urls = options.processor_urls
    if urls is None:
        urls = {}
        for name, port, fee in zip(
            ("default", "fallback"), options.processor_ports, FEES[options.fees]
        ):
            urls[name] = f"http://127.0.0.1:{port}"
            command = [python, "-m", "rinha.emulator", "--port", str(port), "--fee", fee]
            children.append(Child(f"processor-{name}", command, port))
    sockets = [str(options.run_dir / f"replica-{i}.sock") for i in range(1, REPLICAS + 1)]
    controls = [str(options.run_dir / f"replica-{i}.control") for i in range(1, REPLICAS + 1)]
    env = {"PROCESSOR_DEFAULT_URL": urls["default"], "PROCESSOR_FALLBACK_URL": urls["fallback"]}
    journals = [str(options.run_dir / f"replica-{i}.journal") for i in range(1, REPLICAS + 1)]
    for index, (unix, control, journal) in enumerate(zip(sockets, controls, journals)):
        command = [python, "-m", "rinha", "serve", "--port", "0", "--unix", unix]
        command += ["--journal", journal]
        # With the ledger in a store, the replicas meet there (rinha/cluster/store/).
        if not options.shared_store:
            command += ["--control", control]
            for peer_control, peer_journal in zip(controls, journals):
                if peer_control != control:
                    command += ["--peer", peer_control, peer_journal]
            if index:
                command.append("--no-health-poll")
        if options.metrics_ports:
            command += ["--metrics-port", str(options.metrics_ports[index])]
        command += options.serve_options
        name = f"replica-{index + 1}"
        children.append(Child(name, command, unix, env, options.cgroups.get(name, ())))
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise StackError(
            "haproxy is not installed; on Debian or Ubuntu: apt-get install -y haproxy"
        )
    haproxy_env = {
        "RINHA_BIND": f":{options.port}",
        "RINHA_STATS_BIND": f"127.0.0.1:{options.stats_port}",
        **{f"RINHA_REPLICA_{i}": f"unix@{unix}" for i, unix in enumerate(sockets, 1)},
    }
    command = [haproxy, "-db", "-f", str(HAPROXY_CONFIG)]
    children.append(
        Child("haproxy", command, options.port, haproxy_env, options.cgroups.get("haproxy", ()))
    )
    return children


def describe(options: StackOptions, children: list[Child]) -> str:
    lines = [
        f"rinha is up on http://127.0.0.1:{options.port}",
        f"  haproxy stats   http://127.0.0.1:{options.stats_port}/",
        f"  haproxy metrics http://127.0.0.1:{options.stats_port}/metrics",
    ]
    replicas = [child for child in children if child.name.startswith("replica")]
    for index, child in enumerate(replicas):
        line = f"  {child.name:<15} {child.address}"
        if options.metrics_ports:
            line += f" metrics http://127.0.0.1:{options.metrics_ports[index]}/metrics"
        lines.append(line)
    if options.processor_urls is None:
        fee_default, fee_fallback = FEES[options.fees]
        port_default, port_fallback = options.processor_ports
        lines.append(
            f"  processor       default  http://127.0.0.1:{port_default} fee {fee_default}"
        )
        lines.append(
            f"  processor       fallback http://127.0.0.1:{port_fallback} fee {fee_fallback}"
        )
    else:
        for name, url in options.processor_urls.items():
            lines.append(f"  processor       {name:<8} {url}")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def ports_in_use(ports: list[int]) -> list[int]:
    """The ports something listens on: its answers would pass for ours. SO_REUSEADDR, as
    HAProxy and the replicas bind, so the closed connections of a run that just stopped
    (TIME_WAIT) do not count."""
    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError:
                busy.append(port)
    return busy


def run_stack(options: StackOptions, children: list[Child]) -> int:
    busy = ports_in_use(
        [c.address for c in children if isinstance(c.address, int)]
        + [options.stats_port, *options.metrics_ports]
    )
    if busy:
        raise StackError(f"port {busy[0]} is already in use")
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started: list[Child] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        # HAProxy last, so its first checks find every replica listening.
        *services, haproxy = children
        for child in services:
            child.start()
            started.append(child)
        for child in services:
            child.wait_ready(deadline)
        haproxy.start()
        started.append(haproxy)
        haproxy.wait_ready(deadline)
        print(describe(options, children), flush=True)
        while not stop_requested:
            for child in children:
                if child.popen is not None and child.popen.poll() is not None:
                    restart = not child.name.startswith("processor")
                    print(
                        f"rinha: {child.name} exited with status {child.popen.returncode}"
                        + ("; restarting it" if restart else ""),
                        flush=True,
                    )
                    # A replica resumes from its journal. An emulator's memory is gone, so
                    # restarting one would hide a lost test setup.
                    if restart:
                        child.start()
                    else:
                        child.popen = None
            time.sleep(0.2)
        return 0
    finally:
        for child in reversed(started):
            child.stop()
        shutil.rmtree(options.run_dir, ignore_errors=True)


def default_run_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rinha-"))
