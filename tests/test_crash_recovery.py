"""Accepted means kept (SPEC.md §2): a replica killed with SIGKILL at any moment loses none of
the payments it answered 2xx for and none of its confirmed ledger; restarted on its journal it
finishes the pending ones without charging any twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rinha.clock import now_ms, parse_us
from tests.support.audit import assert_exact
from tests.support.clients import Service
from tests.support.processes import call, free_port, wait_for
from tests.support.senders import pay_concurrently


def test_killed_with_payments_in_flight_loses_none_and_charges_none_twice(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    fresh_processors.default.set_delay(300)
    service = service_factory("--journal", str(tmp_path / "journal"))
    accepted = asyncio.run(pay_concurrently(service.url, 300))
    assert len(accepted) == 300
    service.kill()
    service.restart()
    assert_exact(service, fresh_processors)
    assert sum(fresh_processors.stored()) == 300


def test_unsettled_attempt_is_settled_where_it_was_sent_after_a_crash(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    fresh_processors.default.set_delay(800)
    service = service_factory("--journal", str(tmp_path / "journal"))
    assert len(asyncio.run(pay_concurrently(service.url, 20))) == 20
    time.sleep(0.2)  # let the attempts leave; they are held by the processor
    service.kill()
    # The killed attempts land anyway; then the default fails. A fresh attempt would now go
    # to the fallback and charge twice; settling on the default finds them stored.
    wait_for(lambda: fresh_processors.stored()[0] == 20, "the killed attempts stored")
    fresh_processors.default.set_failure(True)
    service.restart()
    assert_exact(service, fresh_processors)
    assert fresh_processors.stored() == (20, 0)


def test_confirmed_ledger_and_known_ids_survive_a_crash(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    service = service_factory("--journal", str(tmp_path / "journal"))
    accepted = asyncio.run(pay_concurrently(service.url, 50))
    before = service.wait_settled()
    service.kill()
    service.restart()
    assert service.summary() == before
    for correlation_id in accepted[:10]:
        assert service.pay(correlation_id).status == 202
    assert service.wait_settled() == before
    assert fresh_processors.stored() == (50, 0)


def test_known_ids_survive_two_restarts(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    # The first restart rewrites the journal compacted; the second reads only that rewrite.
    service = service_factory("--journal", str(tmp_path / "journal"))
    accepted = asyncio.run(pay_concurrently(service.url, 30))
    before = service.wait_settled()
    for _ in range(2):
        service.kill()
        service.restart()
    assert service.summary() == before
    for correlation_id in accepted:
        assert service.pay(correlation_id).status == 202
    assert service.wait_settled() == before
    assert fresh_processors.stored() == (30, 0)


def test_purge_survives_a_crash(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    service = service_factory("--journal", str(tmp_path / "journal"))
    asyncio.run(pay_concurrently(service.url, 10))
    assert service.wait_settled()["default"]["totalRequests"] == 10
    assert call(service.port, "POST", "/purge-payments").status == 200
    service.kill()
    service.restart()
    assert service.summary()["default"]["totalRequests"] == 0


def test_serve_keeps_a_journal_by_default(
    service_factory: Callable[..., Service], fresh_processors: Any
) -> None:
    # Started the documented way, with no --journal: what it answered 202 for survives.
    fresh_processors.default.set_failure(True)
    service = service_factory()
    accepted = asyncio.run(pay_concurrently(service.url, 20))
    assert len(accepted) == 20
    service.kill()
    fresh_processors.default.set_failure(False)
    service.restart()
    assert_exact(service, fresh_processors)
    assert fresh_processors.stored() == (20, 0)


def test_a_second_process_on_the_same_journal_is_refused(
    service_factory: Callable[..., Service], tmp_path: Path
) -> None:
    journal = str(tmp_path / "journal")
    service = service_factory("--journal", journal)
    assert service.pay().status == 202
    second = subprocess.run(
        [sys.executable, "-m", "rinha", "serve", "--port", str(free_port()), "--journal", journal],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert "in use by another process" in second.stderr and "Traceback" not in second.stderr
    assert service.wait_settled()["default"]["totalRequests"] == 1


def test_a_duplicate_answer_to_a_settle_is_recorded_as_the_processor_has_it(
    service_factory: Callable[..., Service], fresh_processors: Any, tmp_path: Path
) -> None:
    # The journal says an attempt stamped `ours` is under way, after an older one stamped
    # `older` that was known not stored; the processor holds that older attempt all the same,
    # and stores it first (held past --settle-after, say). The re-send of `ours` is answered
    # 422: what counts is the requestedAt the processor has.
    correlation_id = str(uuid.uuid4())
    older, ours = "2025-07-15T12:00:01.000Z", "2025-07-15T12:00:02.000Z"
    fresh_processors.default.set_delay(3000)
    held = threading.Thread(
        target=fresh_processors.default.pay, args=(correlation_id, 19.90, older)
    )
    held.start()
    journal = tmp_path / "journal"
    journal.write_text(
        f"A {correlation_id} 1990 {now_ms()}\n"
        f"S {correlation_id} default {parse_us(older) // 1000}\nR {correlation_id}\n"
        f"S {correlation_id} default {parse_us(ours) // 1000}\n"
    )
    service = service_factory("--journal", str(journal))
    held.join()
    service.wait_settled()
    assert service.summary(older, older)["default"]["totalRequests"] == 1
    assert service.summary(ours, ours)["default"]["totalRequests"] == 0
    assert fresh_processors.default.summary()["totalRequests"] == 1
