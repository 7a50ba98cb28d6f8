"""Shared fixtures: real processes over real sockets.

Payment processors (`python -m rinha.emulator`, SPEC.md §3):
- `processors`: a default (fee 0.07) and a fallback (fee 0.10) for the whole session;
- `fresh_processors`: the same two, reset (delay 0, not failing, no payments);
- `processor_factory(**options)`: an extra processor started with the given command-line
  options (`max_in_flight=2` gives `--max-in-flight 2`), stopped at the end of the test.

The service's fixtures live in `tests/service_fixtures.py`, registered below.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.processes import Process, Reply, call, free_port

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


@dataclass
class EmulatedProcessor:
    process: Process
    token: str = "123"

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        """An /admin request carrying the token."""
        return call(self.port, method, path, body, headers={"X-Rinha-Token": self.token})

    def set_delay(self, ms: int) -> None:
        reply = self.admin("PUT", "/admin/configurations/delay", {"delay": ms})
        assert reply.status == 200, reply

    def set_failure(self, failing: bool) -> None:
        reply = self.admin("PUT", "/admin/configurations/failure", {"failure": failing})
        assert reply.status == 200, reply

    def purge(self) -> None:
        reply = self.admin("POST", "/admin/purge-payments")
        assert reply.status == 200, reply

    def summary(self, from_: str | None = None, to: str | None = None) -> Any:
        query = urlencode({k: v for k, v in (("from", from_), ("to", to)) if v is not None})
        reply = self.admin("GET", "/admin/payments-summary" + (f"?{query}" if query else ""))
        assert reply.status == 200, reply
        return reply.json()

    def pay(
        self,
        correlation_id: str | None = None,
        amount: float = 19.90,
        requested_at: str = "2025-07-15T12:34:56.000Z",
    ) -> Reply:
        """POST /payments as the service sends it; a fresh correlationId unless given."""
        payment = {
            "correlationId": correlation_id or str(uuid.uuid4()),
            "amount": amount,
            "requestedAt": requested_at,
        }
        return call(self.port, "POST", "/payments", payment)

    def reject(self, correlation_ids: list[str]) -> None:
        """Answer 400 to these payments, whatever else (the emulator's own switch)."""
        body = {"correlationIds": correlation_ids}
        assert self.admin("PUT", "/admin/configurations/rejected-ids", body).status == 204

    def reset(self) -> None:
        self.set_delay(0)
        self.set_failure(False)
        self.reject([])
        self.purge()


@dataclass
class Processors:
    default: EmulatedProcessor
    fallback: EmulatedProcessor


def start_processor(**options: Any) -> EmulatedProcessor:
    """Start `python -m rinha.emulator` on a free port (unless `port=` is given)."""
    options = {"fee": "0.05", "port": free_port(), **options}
    args = ["-m", "rinha.emulator"]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    process = Process(args, options["port"]).start("/")  # any answer, even 404, means ready
    return EmulatedProcessor(process, token=str(options.get("token", "123")))


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
