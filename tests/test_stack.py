"""`python -m rinha up`: HAProxy and three replicas as one service (issue: one audit wherever
the request lands, one health decider, HAProxy keeps serving when a replica dies)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from tests.processes import call
from tests.service_fixtures import StackUnderTest, start_stack, stop_stack, unix_get, wait_dead
from tests.test_audit import run_burst


def assert_settled_as_the_processors_say(stack: StackUnderTest, processors: Any) -> None:
    final = stack.wait_settled()
    for name in ("default", "fallback"):
        theirs = getattr(processors, name).summary()
        assert final[name]["totalRequests"] == theirs["totalRequests"]
        assert final[name]["totalAmount"] == theirs["totalAmount"]


def test_payments_spread_over_every_replica(stack: StackUnderTest, fresh_processors: Any) -> None:
    before = stack.backend_sessions()
    for _ in range(60):
        assert stack.pay() == 202
    summary = stack.wait_settled()
    after = stack.backend_sessions()
    assert sorted(after) == ["replica-1", "replica-2", "replica-3"]
    assert all(after[name] > before.get(name, 0) for name in after)
    assert summary["default"]["totalRequests"] == 60
    assert fresh_processors.default.summary()["totalRequests"] == 60


def test_a_correlation_id_in_another_case_is_charged_once(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    # The service lowercases an id; HAProxy must route every spelling to the same replica,
    # whose known ids then recognise the replay.
    ids = [str(uuid.uuid4()) for _ in range(30)]
    for correlation_id in ids:
        for spelling in (correlation_id, correlation_id.upper()):
            body = {"correlationId": spelling, "amount": 19.90}
            assert call(stack.port, "POST", "/payments", body).status == 202
    summary = stack.wait_settled()
    assert fresh_processors.default.summary()["totalRequests"] == 30
    assert summary["default"]["totalRequests"] == 30


def test_every_replica_answers_the_same_summary(stack: StackUnderTest) -> None:
    for _ in range(30):
        stack.pay()
    stack.wait_settled()
    answers = []
    for socket_path in stack.replicas.values():
        answers.append(unix_get(socket_path, "/payments-summary"))
    answers += [call(stack.port, "GET", "/payments-summary").body for _ in range(6)]
    assert len(set(answers)) == 1
    assert b'"default":{"totalRequests":30,' in answers[0]


def test_audit_exact_through_haproxy_under_load_and_failures(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    accepted, differences, audits = asyncio.run(run_burst(stack, fresh_processors))  # type: ignore[arg-type]
    assert accepted > 0 and audits >= 5
    assert differences == []
    assert_settled_as_the_processors_say(stack, fresh_processors)


def test_every_summary_stays_exact_while_a_replica_is_killed_mid_burst(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    # A failed summary is scored as zeros, like a wrong one: the live replicas answer for the
    # whole cluster while the killed one is down and while `up` starts it again.
    async def kill_one() -> None:
        await asyncio.sleep(0.5)
        pid = stack.replica_pid("replica-2")
        os.kill(pid, signal.SIGKILL)

    # The final's audit window, which ends 2 s before now: the killed replica's calls in
    # flight are settled by its restart within that.
    accepted, differences, audits = asyncio.run(
        run_burst(stack, fresh_processors, kill_one, lag=timedelta(seconds=2))  # type: ignore[arg-type]
    )
    assert accepted > 0 and audits >= 5
    assert differences == []
    assert_settled_as_the_processors_say(stack, fresh_processors)


def test_purge_on_any_replica_purges_all(stack: StackUnderTest) -> None:
    for _ in range(30):
        stack.pay()
    stack.wait_settled()
    assert call(stack.port, "POST", "/purge-payments").status == 200
    for socket_path in stack.replicas.values():
        assert b'"totalRequests":0,' in unix_get(socket_path, "/payments-summary")
        assert b'"totalRequests":30' not in unix_get(socket_path, "/payments-summary")


def test_a_killed_replica_is_replaced_and_nothing_is_lost(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    fresh_processors.default.set_delay(200)
    answers = [stack.pay_id() for _ in range(30)]
    pid = stack.replica_pid("replica-2")
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    # HAProxy keeps serving: a refused connection is sent to another replica. A request that
    # was already on its way to the dying replica gets a 502: it was never answered 2xx.
    after = [stack.pay_id() for _ in range(60)]
    statuses = [status for _, status in answers + after]
    assert set(statuses) <= {202, 502}
    assert statuses.count(502) <= 3
    assert [status for _, status in after[10:]] == [202] * 50
    # `up` starts the replica again; it resumes from its journal and the audit is whole again.
    deadline = time.monotonic() + 30
    while call(stack.port, "GET", "/payments-summary").status != 200:
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.1)
    final = stack.wait_settled()
    for name in ("default", "fallback"):
        theirs = getattr(fresh_processors, name).summary()
        assert final[name]["totalRequests"] == theirs["totalRequests"]
    # Every payment answered 202 was processed, by exactly one processor.
    for correlation_id, status in answers + after:
        if status == 202:
            found = [
                getattr(fresh_processors, name).admin("GET", f"/payments/{correlation_id}").status
                for name in ("default", "fallback")
            ]
            assert sorted(found) == [200, 404], correlation_id


def test_health_endpoint_is_called_once_per_window_by_the_whole_stack(
    processor_factory: Callable[..., Any],
) -> None:
    # The official window: one call per 5 s per processor, for all callers together.
    processors = SimpleNamespace(
        default=processor_factory(fee="0.07", rate_limit_seconds=5),
        fallback=processor_factory(fee="0.10", rate_limit_seconds=5),
    )
    stack = start_stack(processors)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 60:
            stack.pay()
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        assert stop_stack(stack) == 0
    for name in ("default", "fallback"):
        counts = getattr(processors, name).admin("GET", "/admin/health-calls").json()
        print(f"\n{name}: {counts['answered']} health calls answered in {elapsed:.0f} s")
        assert counts["refused"] == 0
        assert elapsed / 5 - 2 <= counts["answered"] <= elapsed / 5 + 2
