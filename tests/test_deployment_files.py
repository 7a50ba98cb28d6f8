"""compose.yaml, compose.mongo.yaml and the Containerfile, checked without a container engine
(tests/test_deployment.py runs compose.yaml under one).

They must keep the contest's deployment rules (SPEC.md §5) and stay in step with the code they
start: the replicas' commands are the ones `python -m rinha up` runs (rinha/stack.py, plan();
with the ledger in MongoDB, but for where each replica listens and keeps its journal), every
option and environment variable they use is one the code reads, HAProxy reaches each replica
where it listens, and the default split of CPU and memory is the table in rinha/bench/cgroups.py.

A *stack* is what one compose file starts: "default" (compose.yaml, the embedded ledger) and
"mongo" (compose.mongo.yaml, the ledger in MongoDB).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from configparser import ConfigParser
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from rinha.bench.cgroups import CONTEST_LIMITS
from rinha.cli import build_parser
from rinha.config import OneHost, service_config
from rinha.stack import METRICS_PORTS, Child, StackOptions, plan
from tests.support.compose_files import COMPOSE_FILES, compose_file, limits, services

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted(COMPOSE_FILES)
CONTAINERFILE = ROOT / "Containerfile"
HAPROXY_CONFIG = ROOT / "haproxy" / "haproxy.cfg"

CPU_LIMIT = 1.5
MEMORY_LIMIT_MB = 350
PUBLIC_PORT = "9999:9999"
PROCESSORS_NETWORK = "payment-processor"
PROCESSOR_URLS = {
    "PROCESSOR_DEFAULT_URL": "http://payment-processor-default:8080",
    "PROCESSOR_FALLBACK_URL": "http://payment-processor-fallback:8080",
}


def depends_on(service: dict[str, Any]) -> list[str]:
    needs = service.get("depends_on", [])
    return list(needs) if isinstance(needs, (list, dict)) else []


def is_replica(service: dict[str, Any]) -> bool:
    return "build" in service


def replicas(stack: str) -> list[str]:
    return sorted(name for name, service in services(stack).items() if is_replica(service))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source, for the short volume syntax."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


# The contest's rules


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_fits_the_contest_limits(stack: str) -> None:
    capped = [limits(service) for service in services(stack).values()]
    assert round(sum(cpus for cpus, _ in capped), 3) <= CPU_LIMIT
    assert sum(memory for _, memory in capped) <= MEMORY_LIMIT_MB


def test_the_default_split_is_the_bench_table() -> None:
    default = services("default")
    assert sorted(default) == sorted(CONTEST_LIMITS)
    for name, limit in CONTEST_LIMITS.items():
        assert limits(default[name]) == (limit.cpus, limit.memory_mb), name


@pytest.mark.parametrize("stack", STACKS)
def test_one_load_balancer_on_9999_in_front_of_at_least_two_replicas(stack: str) -> None:
    published = [name for name, service in services(stack).items() if service.get("ports")]
    assert len(published) == 1
    assert services(stack)[published[0]]["ports"] == [PUBLIC_PORT]
    assert len(replicas(stack)) >= 2
    assert sorted(depends_on(services(stack)[published[0]])) == replicas(stack)


@pytest.mark.parametrize("stack", STACKS)
def test_bridge_networks_and_the_external_processor_network(stack: str) -> None:
    networks = compose_file(stack)["networks"]
    assert networks[PROCESSORS_NETWORK] == {"external": True}
    for name, network in networks.items():
        if name != PROCESSORS_NETWORK:
            assert network["driver"] == "bridge"
    for name, service in services(stack).items():
        if is_replica(service):
            assert PROCESSORS_NETWORK in service["networks"], name


@pytest.mark.parametrize("stack", STACKS)
def test_nothing_forbidden(stack: str) -> None:
    for name, service in services(stack).items():
        assert "replicas" not in service.get("deploy", {}), name
        assert "network_mode" not in service, name
        assert not service.get("privileged"), name
        assert service.get("pid") != "host" and service.get("ipc") != "host", name


@pytest.mark.parametrize("stack", STACKS)
def test_compose_v1_reads_the_file(stack: str) -> None:
    """Compose v1 (Debian 12's docker-compose 1.29) refuses some of what v2 takes, such as a
    top-level `name:`; it reads a file without a Docker engine."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("Compose v1 is not installed (apt-get install docker-compose)")
    checked = subprocess.run(
        [compose, "-f", str(COMPOSE_FILES[stack]), "config", "--quiet"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_compose_file_matches_the_compose_specification(stack: str) -> None:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema"]
    checked = subprocess.run(
        [*command, "vendor.compose-spec", str(COMPOSE_FILES[stack])],
        check=False,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# In step with the code


def native_replicas(monkeypatch: pytest.MonkeyPatch, ledger: str | None) -> list[Child]:
    """plan()'s replicas with /sockets as its run directory, the contest's processors and this
    RINHA_LEDGER, as `python -m rinha up` reads it. HAProxy need not be installed: plan() only
    looks its path up."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    if ledger is None:
        monkeypatch.delenv("RINHA_LEDGER", raising=False)
    else:
        monkeypatch.setenv("RINHA_LEDGER", ledger)
    urls = {
        "default": PROCESSOR_URLS["PROCESSOR_DEFAULT_URL"],
        "fallback": PROCESSOR_URLS["PROCESSOR_FALLBACK_URL"],
    }
    options = StackOptions(
        9999,
        9998,
        "final",
        (8001, 8002),
        urls,
        Path("/sockets"),
        metrics_ports=METRICS_PORTS,
        shared_store=ledger is not None,
    )
    children = [child for child in plan(options) if child.name.startswith("replica-")]
    assert [child.name for child in children] == ["replica-1", "replica-2", "replica-3"]
    return children


def serve_options(command: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *command])


def stack_ledger(stack: str) -> str | None:
    """The RINHA_LEDGER all the stack's replicas share, None for the embedded ledger."""
    (ledger,) = {
        services(stack)[name]["environment"].get("RINHA_LEDGER") for name in replicas(stack)
    }
    return ledger


@pytest.mark.parametrize("stack", STACKS)
def test_replicas_start_as_the_native_stack_starts_them(
    stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, *entrypoint = containerfile_entrypoint()
    ledger = stack_ledger(stack)
    members = replicas(stack)
    for name, native in zip(members, native_replicas(monkeypatch, ledger), strict=True):
        service = services(stack)[name]
        _, *native_command = native.command
        if ledger is None:
            # One host, as plan()'s: the same command, Python's path aside.
            assert entrypoint + service["command"] == native_command, name
        else:
            # Replicas that share only the store listen on TCP and keep their journals apart;
            # every other option is plan()'s.
            assert native_command[: len(entrypoint)] == entrypoint
            ours = vars(serve_options(service["command"]))
            theirs = vars(serve_options(native_command[len(entrypoint) :]))
            for where in ("host", "port", "unix", "journal"):
                del ours[where], theirs[where]
            assert ours == theirs, name
        # The same environment, the ledger aside.
        assert native.env == {k: v for k, v in service["environment"].items() if k in native.env}
        assert set(service["environment"]) - set(native.env) <= {"RINHA_LEDGER"}, name


@pytest.mark.parametrize("stack", STACKS)
def test_replica_settings_are_ones_the_service_reads(stack: str) -> None:
    members = replicas(stack)
    for name in members:
        service = services(stack)[name]
        environment = service["environment"]
        # Raises on a bad RINHA_LEDGER, or on cluster options beside one.
        config = service_config(serve_options(service["command"]), environment)
        assert config.processor_urls == {
            "default": PROCESSOR_URLS["PROCESSOR_DEFAULT_URL"],
            "fallback": PROCESSOR_URLS["PROCESSOR_FALLBACK_URL"],
        }
        assert config.journal is not None, name
        for variable in environment:
            assert variable_is_read(variable), variable
        if stack == "default":
            assert isinstance(config.topology, OneHost)
        else:
            ledger = environment["RINHA_LEDGER"]
            assert ledger.split("//")[1].split(":")[0] in services(stack), ledger
    if stack != "default":
        # They share only the store, as on machines of their own.
        sources = [source for name in members for source in mounts(services(stack)[name]).values()]
        assert len(sources) == len(set(sources)), sources


def variable_is_read(variable: str) -> bool:
    return any(f'"{variable}"' in path.read_text() for path in (ROOT / "rinha").rglob("*.py"))


def load_balancer(stack: str) -> dict[str, Any]:
    return next(service for service in services(stack).values() if service.get("ports"))


def volume_holding(service: dict[str, Any], path: str) -> str | None:
    """The source of the service's mount that holds this path, if any."""
    targets = [target for target in mounts(service) if PurePosixPath(path).is_relative_to(target)]
    return mounts(service)[max(targets, key=len)] if targets else None


@pytest.mark.parametrize("stack", STACKS)
def test_haproxy_reaches_every_replica(stack: str) -> None:
    balancer = load_balancer(stack)
    environment = balancer["environment"]
    config = HAPROXY_CONFIG.read_text()
    assert set(environment) == set(re.findall(r"\$\{(\w+)\}", config))
    config_source = mounts(balancer)["/usr/local/etc/haproxy/haproxy.cfg"]
    assert (ROOT / config_source).resolve() == HAPROXY_CONFIG
    servers = re.findall(r'^\s*server \S+ "\$\{(\w+)\}"', config, re.MULTILINE)
    for name, variable in zip(replicas(stack), servers, strict=True):
        service = services(stack)[name]
        args = serve_options(service["command"])
        address = environment[variable]
        if address.startswith("unix@"):
            # On one host: the replica's socket, on a volume both mount.
            socket = address.removeprefix("unix@")
            assert args.unix == socket, name
            volume = volume_holding(service, socket)
            assert volume is not None and volume_holding(balancer, socket) == volume, name
        else:
            # Over TCP: the replica's service name and its port, on every address.
            assert address == f"{name}:{args.port}", name
            assert args.port and args.host == "0.0.0.0", name


@pytest.mark.parametrize("stack", STACKS)
def test_haproxy_accepts_its_configuration_with_the_stack_environment(stack: str) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    # Service names resolve only on the stack's network: here, the loopback stands for them.
    environment = {}
    for variable, value in load_balancer(stack)["environment"].items():
        host, _, port = value.rpartition(":")
        environment[variable] = f"127.0.0.1:{port}" if host in services(stack) else value
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CONFIG)],
        env=environment,
        check=False,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# The image


def containerfile_stages() -> list[list[tuple[str, str]]]:
    """The Containerfile's instructions, (KEYWORD, arguments), one list per stage."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> Iterator[str]:
    return (arguments for found, arguments in stage if found == keyword)


def containerfile_entrypoint() -> list[str]:
    (entrypoint,) = instructions(containerfile_stages()[-1], "ENTRYPOINT")
    return json.loads(entrypoint)


def test_the_image_runs_rinha_serve_from_its_environment() -> None:
    build, final = containerfile_stages()
    python, *arguments = containerfile_entrypoint()
    assert arguments == ["-m", "rinha", "serve"]
    environment = python.removesuffix("/bin/python")
    created = " ".join(instructions(build, "RUN"))
    assert f"venv --without-pip {environment}" in created
    assert any(
        copied.endswith(f" {environment} {environment}") for copied in instructions(final, "COPY")
    )


def test_the_image_runs_as_the_user_haproxy_runs_as() -> None:
    final = containerfile_stages()[-1]
    (user,) = instructions(final, "USER")
    assert user not in ("root", "0")
    uid = re.search(rf"useradd .*--uid (\d+) .*\b{user}\b", " ".join(instructions(final, "RUN")))
    assert uid is not None
    for stack in STACKS:
        assert load_balancer(stack)["user"] == f"{uid.group(1)}:{uid.group(1)}", stack


def test_the_image_installs_exactly_what_setup_cfg_requires() -> None:
    build, final = containerfile_stages()
    installs = [
        shlex.split(part.strip())
        for run in instructions(build, "RUN")
        for part in run.split("&&")
        if " install " in f" {part} "
    ]
    assert len(installs) == 1
    assert installs[0][0] == "pip" and installs[0][-2:] == ["install", "."]
    copied = " ".join(instructions(build, "COPY")).split()
    setup = ConfigParser()
    setup.read(ROOT / "setup.cfg")
    readme = setup["metadata"]["long_description"].removeprefix("file:").strip()
    for needed in ("pyproject.toml", "setup.cfg", readme, "rinha"):
        assert needed in copied, needed
    # Nothing is installed or built in the final stage: only the environment is copied in.
    final_runs = " ".join(instructions(final, "RUN"))
    assert "pip" not in final_runs and "apt-get" not in final_runs


def test_images_are_pinned_to_exact_releases() -> None:
    for stage in containerfile_stages():
        (base,) = (arguments.split()[0] for keyword, arguments in stage if keyword == "FROM")
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    for stack in STACKS:
        for name, service in services(stack).items():
            if "image" in service and not is_replica(service):
                assert re.fullmatch(r"[\w.-]+:\d+\.\d+\.\d+(-\w+)?", service["image"]), name
