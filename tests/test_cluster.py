"""Replicas of one host without HAProxy (SPEC.md §2: the summary counts exactly what the
processors confirmed, whatever instance the request lands on): any live replica answers for
the whole cluster alone, and a purge forgets everything accepted before it on every replica,
a dead one included."""

from __future__ import annotations

import time
from typing import Any

from tests.processes import call
from tests.service_fixtures import Service


def pay_each(replicas: list[Service], count: int) -> None:
    for replica in replicas:
        for _ in range(count):
            assert replica.pay().status == 202


def test_a_replica_answers_for_the_cluster_while_a_peer_is_dead(
    cluster: list[Service], fresh_processors: Any
) -> None:
    first, second, third = cluster
    pay_each(cluster, 10)
    assert first.wait_settled()["default"]["totalRequests"] == 30
    fresh_processors.default.set_delay(2000)
    pay_each([second], 5)
    second.kill()  # with its five payments sent and not yet answered
    for replica in (first, third):
        summary = replica.summary()
        assert summary["default"]["totalRequests"] == 30
        assert summary["pending"]["totalRequests"] == 5
    second.restart()
    settled = [replica.wait_settled()["default"] for replica in cluster]
    theirs = fresh_processors.default.summary()
    assert theirs["totalRequests"] == 35
    for summary in settled:
        assert (summary["totalRequests"], summary["totalAmount"]) == (35, theirs["totalAmount"])


def test_a_purge_with_a_replica_down_reaches_it_when_it_starts(
    cluster: list[Service], fresh_processors: Any
) -> None:
    first, second, third = cluster
    pay_each(cluster, 10)
    assert first.wait_settled()["default"]["totalRequests"] == 30
    fresh_processors.default.set_failure(True)
    pay_each([third], 5)  # held for the default
    third.kill()
    assert call(first.port, "POST", "/purge-payments").status == 200
    for replica in (first, second):
        summary = replica.summary()
        assert summary["default"]["totalRequests"] == 0
        assert summary["pending"]["totalRequests"] == 0
    fresh_processors.default.set_failure(False)
    third.restart()
    time.sleep(1.0)
    for replica in cluster:
        summary = replica.summary()
        assert summary["default"]["totalRequests"] == 0
        assert summary["pending"]["totalRequests"] == 0
    assert fresh_processors.default.summary()["totalRequests"] == 30  # the five never left
