"""compose.yaml under a real Docker engine, as the contest runs it (SPEC.md §5).

rinha/bench/compose.py starts it as the bench's `--compose` does: the image built from the
Containerfile, the two processors (the project's emulator, from the same image) as containers
under the contest's names on the external network `payment-processor`, which it makes, then the
stack `up`; everything goes through port 9999. The containers stay on bridge networks of the
test's own making, and the test removes all it started, on failure too.

Where Docker Hub cannot be reached, the Containerfile's base and HAProxy's image are the local
STAND-INS that tests/prepare builds under the official names (label rinha.stand-in); the contest
pulls the real ones. Needs root (the crash is a SIGKILL from the host), Debian's docker.io client
and Compose v1 or v2. Without an engine the test skips, saying why; with CI=true it fails instead,
so that CI never passes without having run it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from rinha.bench.compose import (
    DOCKER,
    PROCESSOR_NAMES,
    PUBLIC_PORT,
    ComposeStack,
    build_image,
    docker,
)
from rinha.stack import FEES
from tests.support.audit import assert_exact
from tests.support.clients import Client, EmulatedProcessor, Processors
from tests.support.compose_files import limits, services
from tests.support.processes import Process, free_port
from tests.support.senders import burst

CFS_PERIOD_US = 100_000


def unavailable(reason: str) -> None:
    """Skip, or under CI fail: CI must never pass without having run the deployment."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def check_machine() -> None:
    if not os.path.exists(DOCKER):
        unavailable(f"no Docker client at {DOCKER} (apt-get install docker.io)")
    if subprocess.run([DOCKER, "info"], capture_output=True, check=False).returncode != 0:
        unavailable("no Docker engine answers (tests/prepare starts one)")
    if os.geteuid() != 0:
        unavailable("the crash is a SIGKILL from the host: run as root")
    for image in ("python:3.11.13-slim-bookworm", "haproxy:2.6.17-alpine"):
        if docker("image", "inspect", image, check=False) == "[]":
            unavailable(f"no image {image} (docker pull it, or tests/prepare builds a stand-in)")


@pytest.fixture(scope="module")
def deployment() -> Iterator[ComposeStack]:
    check_machine()
    build_image()
    ports = (free_port(), free_port())
    running = ComposeStack(f"rinha-test-{os.getpid()}", FEES["final"], ports)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def emulators(deployment: ComposeStack) -> Processors:
    """The processors as the other tests see them, but run by Docker: Process only gives the
    published port."""
    return Processors(
        *(
            EmulatedProcessor(Process([], deployment.processor_ports[name]))
            for name in PROCESSOR_NAMES
        )
    )


def test_a_burst_with_a_replica_killed_is_exact_and_the_replica_restarts(
    deployment: ComposeStack,
) -> None:
    stack = Client(PUBLIC_PORT)
    processors = emulators(deployment)
    killed = deployment.pid("replica-2")

    async def kill_replica(pause: asyncio.Event) -> None:
        # A crash, not a stop: SIGKILL to the replica's process from outside its container.
        await asyncio.sleep(0.5)
        os.kill(killed, signal.SIGKILL)
        await asyncio.to_thread(wait_restarted, deployment, "replica-2", killed)

    # The final's audit window ends 2 s before now: the killed replica's calls in flight are
    # settled by its restart within that.
    found = asyncio.run(
        burst(
            processors,
            lambda index: [stack.url],
            [stack.url],
            meanwhile=kill_replica,
            lag=timedelta(seconds=2),
        )
    )
    assert found.accepted and found.audits >= 5
    assert found.differences == []
    state = deployment.inspect("replica-2")
    assert state["RestartCount"] == 1 and state["State"]["Running"]
    # Nothing lost, nothing counted twice: what the stack says is what the processors say,
    # and every payment answered 202 was processed.
    theirs = assert_exact(stack, processors)
    processed = sum(theirs[name]["totalRequests"] for name in PROCESSOR_NAMES)
    assert processed >= len(found.accepted)


def wait_restarted(deployment: ComposeStack, service: str, old_pid: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        state = deployment.inspect(service)["State"]
        if state["Running"] and state["Pid"] not in (0, old_pid):
            return
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def test_the_containers_run_under_the_compose_file_limits(deployment: ComposeStack) -> None:
    for name, service in services("default").items():
        cpus, memory_mb = limits(service)
        container = deployment.container(name)
        assert cgroup_limits(container) == (round(cpus * CFS_PERIOD_US), round(memory_mb * 2**20))
        policy = deployment.inspect(name)["HostConfig"]["RestartPolicy"]["Name"]
        assert policy == service["restart"] == "unless-stopped", name


def cgroup_limits(container: str) -> tuple[int, int]:
    """CPU quota per 100 ms period and memory limit, as the kernel holds them for the
    container, read inside it: cgroup v2's files, or v1's."""
    v2 = subprocess.run(
        [DOCKER, "exec", container, "cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/memory.max"],
        capture_output=True,
        text=True,
        check=False,
    )
    if v2.returncode == 0:
        quota, period, memory = v2.stdout.split()
    else:
        v1 = ("cpu/cpu.cfs_period_us", "cpu/cpu.cfs_quota_us", "memory/memory.limit_in_bytes")
        period, quota, memory = docker(
            "exec", container, "cat", *(f"/sys/fs/cgroup/{path}" for path in v1)
        ).split()
    assert int(period) == CFS_PERIOD_US
    return int(quota), int(memory)


def test_down_with_volumes_leaves_nothing(deployment: ComposeStack) -> None:
    deployment.run_compose("down", "-v")
    assert deployment.leftovers() == []
