"""The dispatcher's rules against real processors (rinha/delivery/; SPEC.md §3, §4):
prefer the default, route around failures, settle unanswered attempts on the processor that
may have stored them, record only what a processor confirmed, never lose a payment."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.audit import assert_exact
from tests.support.clients import Service
from tests.support.processes import call, free_port


def stamp_groups(processor: Any, ids: list[str]) -> int:
    """How many bursts the payments left in: runs of requestedAt at most 2 ms apart."""
    stamps = []
    for correlation_id in ids:
        stored = processor.admin("GET", f"/payments/{correlation_id}").json()
        stamps.append(datetime.fromisoformat(stored["requestedAt"]).timestamp() * 1000)
    stamps.sort()
    return 1 + sum(1 for earlier, later in itertools.pairwise(stamps) if later - earlier > 2)


def test_slow_default_is_still_preferred(service: Service, fresh_processors: Any) -> None:
    fresh_processors.default.set_delay(300)
    for _ in range(5):
        assert service.pay().status == 202
    service.wait_settled()
    assert fresh_processors.stored() == (5, 0)
    assert_exact(service, fresh_processors)


def test_requested_at_is_stamped_past_the_announced_delay(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # The processor stores a payment only after its delay; stamped at the send time, it would
    # enter the audit's window before both sides had it (rinha/delivery/settle.py).
    fresh_processors.default.set_delay(500)
    service = service_factory("--stamp-ahead-ms", "0")
    time.sleep(1)  # a few health reports: the delay is known
    correlation_id = str(uuid.uuid4())
    posted_at = datetime.now(UTC)
    assert service.pay(correlation_id).status == 202
    service.wait_settled()
    stored = fresh_processors.default.admin("GET", f"/payments/{correlation_id}").json()
    requested_at = datetime.fromisoformat(stored["requestedAt"]).replace(tzinfo=UTC)
    assert requested_at - posted_at >= timedelta(milliseconds=500)
    assert_exact(service, fresh_processors)


def test_failing_default_routes_to_fallback_once_held_enough(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    fresh_processors.default.set_failure(True)
    service = service_factory("--max-hold", "0")
    for _ in range(10):
        assert service.pay().status == 202
    service.wait_settled()
    default, fallback = fresh_processors.stored()
    assert (default, fallback) == (0, 10)
    assert_exact(service, fresh_processors)


def test_failing_default_is_waited_for_up_to_max_hold(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    fresh_processors.default.set_failure(True)
    service = service_factory("--max-hold", "30")
    for _ in range(5):
        assert service.pay().status == 202
    # Held, not sent to the dearer fallback: visibly pending.
    assert service.summary()["pending"]["totalRequests"] == 5
    fresh_processors.default.set_failure(False)
    service.wait_settled()
    assert fresh_processors.stored() == (5, 0)
    assert_exact(service, fresh_processors)


def test_held_payment_goes_to_fallback_after_max_hold(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    fresh_processors.default.set_failure(True)
    service = service_factory("--max-hold", "1")
    for _ in range(5):
        assert service.pay().status == 202
    assert service.summary()["pending"]["totalRequests"] == 5
    service.wait_settled()
    assert fresh_processors.stored() == (0, 5)
    assert_exact(service, fresh_processors)


def test_default_is_used_again_once_it_recovers(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    service = service_factory("--max-hold", "0")
    fresh_processors.default.set_failure(True)
    service.pay()
    service.wait_settled()
    fresh_processors.default.set_failure(False)
    # The recovery is seen through a probe or the next health report; wait for the first
    # payment to land on the default, then every later one must go there too.
    for _ in range(200):
        service.pay()
        service.wait_settled()
        if fresh_processors.stored()[0]:
            break
    _, fallback_before = fresh_processors.stored()
    for _ in range(5):
        service.pay()
    service.wait_settled()
    assert fresh_processors.stored()[1] == fallback_before
    assert_exact(service, fresh_processors)


def test_unanswered_attempt_is_settled_on_the_same_processor(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # The client gives up before the processor answers, but the processor stores it anyway.
    fresh_processors.default.set_delay(600)
    service = service_factory("--processor-timeout", "0.3", "--settle-after", "5")
    correlation_id = str(uuid.uuid4())
    assert service.pay(correlation_id).status == 202
    summary = service.wait_settled()
    assert fresh_processors.stored() == (1, 0)
    assert summary["default"]["totalRequests"] == 1
    stored = fresh_processors.default.admin("GET", f"/payments/{correlation_id}")
    requested_at = stored.json()["requestedAt"]
    # Recorded with exactly the requestedAt the processor stored.
    assert service.summary(requested_at, requested_at)["default"]["totalRequests"] == 1
    assert_exact(service, fresh_processors)


def test_unanswered_attempt_that_was_not_stored_goes_elsewhere_once_settled(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # The default is failing and slower than the client's patience: the first attempt is
    # unanswered, and the default never stores it.
    fresh_processors.default.set_failure(True)
    fresh_processors.default.set_delay(600)
    service = service_factory(
        "--processor-timeout", "0.3", "--settle-after", "1", "--max-hold", "0"
    )
    assert service.pay().status == 202
    # Answers now come before the timeout: re-sends are refused, the lookup finds nothing.
    fresh_processors.default.set_delay(0)
    service.wait_settled()
    assert fresh_processors.stored() == (0, 1)
    assert_exact(service, fresh_processors)


def test_both_failing_holds_payments_until_one_recovers(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    service = service_factory("--max-hold", "0")
    fresh_processors.default.set_failure(True)
    fresh_processors.fallback.set_failure(True)
    for _ in range(20):
        assert service.pay().status == 202
    assert service.summary()["pending"]["totalRequests"] == 20
    assert fresh_processors.stored() == (0, 0)
    fresh_processors.fallback.set_failure(False)
    service.wait_settled()
    assert sum(fresh_processors.stored()) == 20
    assert_exact(service, fresh_processors)


def test_unreachable_default_is_routed_around(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    service = service_factory("--max-hold", "0", default_url=f"http://127.0.0.1:{free_port()}")
    for _ in range(5):
        assert service.pay().status == 202
    summary = service.wait_settled()
    assert summary["fallback"]["totalRequests"] == 5
    assert summary["default"]["totalRequests"] == 0
    assert fresh_processors.stored() == (0, 5)


def test_a_rejected_payment_holds_nothing_back(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # A 400 for one payment says nothing of the default's health: the others still go there,
    # none to the fallback, and the refused one stays visibly pending. Health reports come
    # at the official pace, so a wrong "failing" would last until the next one.
    poison = str(uuid.uuid4())
    fresh_processors.default.reject([poison])
    service = service_factory("--max-hold", "0", "--health-interval", "5")
    assert service.pay(poison).status == 202
    for _ in range(30):
        assert service.pay().status == 202
        time.sleep(0.01)
    deadline = time.monotonic() + 10
    while (summary := service.summary())["default"]["totalRequests"] < 30:
        assert time.monotonic() < deadline, summary
        time.sleep(0.05)
    assert summary["pending"]["totalRequests"] == 1
    assert summary["fallback"]["totalRequests"] == 0
    assert fresh_processors.fallback.summary()["totalRequests"] == 0
    # Forgotten, so that stopping does not wait for it.
    assert call(service.port, "POST", "/purge-payments").status == 200


def test_a_processor_that_rejects_every_payment_is_failed_over(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # Two payments rejected in a row, none confirmed between: the default is at fault, and
    # payments fail over. The first is set aside before that is known, and so is the second,
    # rejected again as the default's first probe.
    ids = [str(uuid.uuid4()) for _ in range(10)]
    fresh_processors.default.reject(ids)
    service = service_factory("--max-hold", "0", "--health-interval", "5")
    for correlation_id in ids:
        assert service.pay(correlation_id).status == 202
    deadline = time.monotonic() + 10
    while (summary := service.summary())["fallback"]["totalRequests"] < 8:
        assert time.monotonic() < deadline, summary
        time.sleep(0.05)
    assert call(service.port, "POST", "/purge-payments").status == 200


def test_a_paced_backlog_leaves_a_pass_interval_at_a_time(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # At 200 a second, each 50 ms pass starts the next ten payments together, stamped within
    # a millisecond or two of each other. Woken whenever one more may leave, a drain would
    # send them one at a time, 5 ms apart, each one a wakeup of its own.
    fresh_processors.default.set_failure(True)
    service = service_factory("--max-send-rate", "200")
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for correlation_id in ids:
        assert service.pay(correlation_id).status == 202
    fresh_processors.default.set_failure(False)
    service.wait_settled()
    assert fresh_processors.stored() == (40, 0)
    assert stamp_groups(fresh_processors.default, ids) <= 14
    assert_exact(service, fresh_processors)


def test_holds_that_end_one_after_another_leave_a_pass_interval_at_a_time(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # Accepted 5 ms apart, held for the failing default for 1 s each, the payments reach the
    # fallback together, one 50 ms pass's worth at a time, not each at its own hold's end.
    fresh_processors.default.set_failure(True)
    service = service_factory("--max-hold", "1")
    ids = [str(uuid.uuid4()) for _ in range(40)]
    for correlation_id in ids:
        assert service.pay(correlation_id).status == 202
        time.sleep(0.005)
    service.wait_settled()
    assert fresh_processors.stored() == (0, 40)
    assert stamp_groups(fresh_processors.fallback, ids) <= 20
    assert_exact(service, fresh_processors)
