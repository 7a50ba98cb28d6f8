"""Fixtures that start the service as real processes: one replica (`python -m rinha serve`),
three replicas of one host without HAProxy, or the whole stack (`python -m rinha up`: HAProxy
and three replicas)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Service, StackUnderTest, start_service, start_stack, stop_stack
from tests.support.clusters import start_host_cluster, stop_all


def processor_env(processors: Any) -> dict[str, str]:
    return {
        "PROCESSOR_DEFAULT_URL": processors.default.url,
        "PROCESSOR_FALLBACK_URL": processors.fallback.url,
    }


@pytest.fixture
def service_factory(fresh_processors: Any, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start a service instance wired to the test processors, with extra CLI options. Its
    default journal lives in this test's own state directory."""
    started: list[Service] = []
    env = {**processor_env(fresh_processors), "XDG_STATE_HOME": str(tmp_path / "state")}

    def start(
        *options: str, default_url: str | None = None, fallback_url: str | None = None
    ) -> Service:
        urls = {}
        if default_url:
            urls["PROCESSOR_DEFAULT_URL"] = default_url
        if fallback_url:
            urls["PROCESSOR_FALLBACK_URL"] = fallback_url
        service = start_service(*options, env={**env, **urls})
        started.append(service)
        return service

    yield start
    for service in started:
        assert service.process.stop() in (0, None), "the service did not stop cleanly"


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()


@pytest.fixture
def cluster(fresh_processors: Any, tmp_path: Path) -> Iterator[list[Service]]:
    """Three replicas of one host (tests/support/clusters.py), each on a TCP port of its own
    and with no HAProxy in front; their journals are `tmp_path / "replica-N.journal"`."""
    replicas = start_host_cluster(tmp_path, processor_env(fresh_processors))
    yield replicas
    stop_all(replicas)


@pytest.fixture
def stack(fresh_processors: Any) -> Iterator[StackUnderTest]:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    running = start_stack(fresh_processors)
    yield running
    assert stop_stack(running) == 0
