"""`python -m rinha up`: HAProxy in front of three replicas as one service: payments spread
over every replica, a replayed id reaches the replica that has it, the audit stays exact
through HAProxy, and HAProxy keeps serving when a replica dies while `up` starts it again.
What the replicas promise each other is tests/test_cluster_contract.py's."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any

from tests.support.audit import assert_exact, assert_processed_once
from tests.support.clients import StackUnderTest
from tests.support.processes import wait_dead, wait_for
from tests.support.senders import burst


def test_payments_spread_over_every_replica(stack: StackUnderTest, fresh_processors: Any) -> None:
    before = stack.backend_sessions()
    for _ in range(60):
        assert stack.pay().status == 202
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
            assert stack.pay(spelling).status == 202
    summary = stack.wait_settled()
    assert fresh_processors.default.summary()["totalRequests"] == 30
    assert summary["default"]["totalRequests"] == 30


def test_audit_exact_through_haproxy_under_load_and_failures(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    found = asyncio.run(burst(fresh_processors, lambda index: [stack.url], [stack.url]))
    assert found.accepted and found.audits >= 5
    assert found.differences == []
    assert_exact(stack, fresh_processors)


def test_a_killed_replica_is_replaced_and_nothing_is_lost(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    fresh_processors.default.set_delay(200)
    ids = [str(uuid.uuid4()) for _ in range(90)]
    answers = [stack.pay(correlation_id).status for correlation_id in ids[:30]]
    pid = stack.replica_pid("replica-2")
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    # HAProxy keeps serving: a refused connection is sent to another replica. A request that
    # was already on its way to the dying replica gets a 502: it was never answered 2xx.
    after = [stack.pay(correlation_id).status for correlation_id in ids[30:]]
    assert set(answers + after) <= {202, 502}
    assert (answers + after).count(502) <= 3
    assert after[10:] == [202] * 50
    # `up` starts the replica again; it resumes from its journal and the audit is whole again.
    wait_for(
        lambda: stack.call("GET", "/payments-summary").status == 200,
        "the killed replica back",
        timeout=30,
    )
    assert_exact(stack, fresh_processors)
    # Every payment answered 202 was processed, by exactly one processor; one answered 502
    # may have been accepted too.
    statuses = dict(zip(ids, answers + after))
    assert_processed_once(
        [correlation_id for correlation_id, status in statuses.items() if status == 202],
        fresh_processors,
        [correlation_id for correlation_id, status in statuses.items() if status == 502],
    )
