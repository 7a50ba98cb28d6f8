"""Shared fixtures: real processes over real sockets.

Payment processors (`python -m rinha.emulator`, SPEC.md §3):
- `processors`: a default (fee 0.07) and a fallback (fee 0.10) for the whole session;
- `fresh_processors`: the same two, reset (delay 0, not failing, no payments);
- `processor_factory(**options)`: an extra processor started with the given command-line
  options (`max_in_flight=2` gives `--max-in-flight 2`), stopped at the end of the test.

MongoDB (tests/support/clusters.py): `mongo_url`, a server for the session;
`stoppable_stand_in`, a stand-in of the test's own that it may stop and start.

The service's fixtures live in `tests/service_fixtures.py`, registered below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import EmulatedProcessor, Processors, start_processor
from tests.support.clusters import StandIn, mongo_skip_reason, stand_in_executable
from tests.support.processes import free_port

pytest_plugins = ["tests.service_fixtures"]

# Short health windows keep the tests fast; the official one is 5 s.
PROCESSOR_HEALTH_WINDOW_SECONDS = 0.2


@pytest.fixture(autouse=True, scope="session")
def state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A replica started without --journal keeps one in the user's state directory: point
    every process the tests start at one of the session's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(scope="session")
def processors() -> Iterator[Processors]:
    started: list[EmulatedProcessor] = []
    try:
        for fee in ("0.07", "0.10"):
            started.append(
                start_processor(fee=fee, rate_limit_seconds=PROCESSOR_HEALTH_WINDOW_SECONDS)
            )
        yield Processors(default=started[0], fallback=started[1])
    finally:
        for processor in started:
            processor.process.stop()


@pytest.fixture
def fresh_processors(processors: Processors) -> Processors:
    processors.default.reset()
    processors.fallback.reset()
    return processors


@pytest.fixture
def processor_factory() -> Iterator[Callable[..., EmulatedProcessor]]:
    started: list[EmulatedProcessor] = []

    def start(**options: Any) -> EmulatedProcessor:
        processor = start_processor(**options)
        started.append(processor)
        return processor

    yield start
    for processor in started:
        processor.process.stop()


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """A MongoDB server for the session: RINHA_TEST_MONGO_URL, or a stand-in started here."""
    reason = mongo_skip_reason()
    if reason:
        pytest.skip(reason)
    given = os.environ.get("RINHA_TEST_MONGO_URL")
    if given:
        yield given
        return
    executable = stand_in_executable()
    assert executable is not None
    server = StandIn(executable, ":memory:", free_port()).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def stoppable_stand_in(tmp_path: Path) -> Iterator[StandIn]:
    """A stand-in of this test's own, its data on disk so that it survives a restart."""
    if os.environ.get("RINHA_TEST_MONGO_URL"):
        pytest.skip("stops the store: runs only against a stand-in started here")
    reason = mongo_skip_reason()
    if reason:
        pytest.skip(reason)
    executable = stand_in_executable()
    assert executable is not None
    server = StandIn(executable, str(tmp_path / "store"), free_port()).start()
    yield server
    server.stop()
