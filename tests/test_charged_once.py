"""Charged once across replicas. HAProxy sends each payment to the replica that
owns its correlationId by hashing the id it reads in the body, and the replica parses the body
again. Where the two readings could differ, a second replica would accept an id that another
already holds, and its attempt's 422 would be recorded as its own: counted twice. A body whose
id HAProxy does not read as the replica does is refused.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.audit import assert_exact
from tests.support.clients import StackUnderTest
from tests.support.processes import call, wait_dead
from tests.support.wire import unix_call


def post(stack: StackUnderTest, body: bytes) -> int:
    headers = {"Content-Type": "application/json"}
    return call(stack.port, "POST", "/payments", body, headers=headers).status


def test_a_body_naming_its_id_twice_is_refused(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    held = str(uuid.uuid4())
    assert post(stack, b'{"correlationId":"%s","amount":19.90}' % held.encode()) == 202
    # HAProxy hashes the first id, the replica would read the last: each decoy sends the
    # held id to whichever replica owns the decoy, most of them another than its owner.
    for _ in range(8):
        decoy = str(uuid.uuid4()).encode()
        body = b'{"correlationId":"%s","amount":19.90,"correlationId":"%s"}' % (
            decoy,
            held.encode(),
        )
        assert post(stack, body) == 422
    assert_exact(stack, fresh_processors)
    assert fresh_processors.default.summary()["totalRequests"] == 1


def test_a_body_whose_id_key_is_escaped_is_refused(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    # "correlation\u0049d" is "correlationId" to a JSON parser, but HAProxy's json_query does
    # not find it and balances the request round robin, onto every replica in turn.
    held = str(uuid.uuid4()).encode()
    body = b'{"correlation\\u0049d":"%s","amount":19.90}' % held
    for _ in range(6):
        assert post(stack, body) == 422
    assert_exact(stack, fresh_processors)
    assert fresh_processors.default.summary()["totalRequests"] == 0


def test_a_retry_after_its_replica_died_is_charged_once(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    # (issue 22, H2) The client sends the same payment again after the replica that
    # accepted it died (HAProxy answered 502, or the 202 was lost): HAProxy sends the retry
    # to another replica, which must see it in the dead replica's journal.
    correlation_id = str(uuid.uuid4())
    body = b'{"correlationId":"%s","amount":19.90}' % correlation_id.encode()
    assert post(stack, body) == 202
    holder = next(
        name
        for name, socket_path in stack.replicas.items()
        if f"A {correlation_id} " in Path(socket_path).with_suffix(".journal").read_text()
    )
    pid = stack.replica_pid(holder)
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    # As a client does: again after a 502 (HAProxy's idle connection to the dead replica).
    retries = [post(stack, body) for _ in range(3)]
    assert 202 in retries and set(retries) <= {202, 502}, retries
    deadline = time.monotonic() + 30
    while call(stack.port, "GET", "/payments-summary").status != 200:
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.1)
    assert_exact(stack, fresh_processors)
    assert fresh_processors.default.summary()["totalRequests"] == 1


def test_one_id_accepted_by_two_replicas_is_counted_once(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    # (issue 22, H1) Sent to two replicas straight, within the second before each reads the
    # other's journal, one id is accepted by both; only one attempt can be stored. The other
    # is answered 422, and the lookup then finds the first one's payment: recorded as its own,
    # it was counted twice. Only a stored requestedAt it sent proves a payment ours.
    sockets = list(stack.replicas.values())
    for _ in range(5):
        correlation_id = str(uuid.uuid4())
        body = b'{"correlationId":"%s","amount":19.90}' % correlation_id.encode()
        for socket_path in sockets[:2]:
            assert unix_call(socket_path, "POST", "/payments", body).status == 202
        journals = [Path(path).with_suffix(".journal").read_text() for path in sockets[:2]]
        if all(f"A {correlation_id} " in journal for journal in journals):
            break  # both accepted it
    else:
        raise AssertionError("each time, one replica had read the other's journal already")
    assert_exact(stack, fresh_processors)
    assert fresh_processors.default.summary()["totalRequests"] == 1
