"""Processors misbehaving, and overload (SPEC.md §2–§4): whatever the processors do, every
accepted payment is processed exactly once and the audit stays exact.

Each test prints its figures: payments accepted / processed / lost / charged twice / audit
differences. `RINHA_LONG=1` runs the long versions (both processors down for a minute,
overload for 30 s) instead of the short ones CI runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import Service, StackUnderTest
from tests.support.senders import pay_concurrently

LONG = os.environ.get("RINHA_LONG") == "1"
POST_LUA = Path(__file__).resolve().parent.parent / "bench" / "post.lua"


def figures(
    name: str,
    accepted: list[str] | int,
    processors: list[Any],
    ours: dict[str, Any],
    unread: int = 0,
) -> None:
    """Print the fault's figures and assert them: nothing lost, nothing twice, audit exact.

    `unread` is how many requests may have been accepted without the client reading the 202
    (cut off when a load generator stops)."""
    count = accepted if isinstance(accepted, int) else len(accepted)
    theirs = [p.summary() for p in processors]
    processed = sum(t["totalRequests"] for t in theirs)
    ours_total = ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"]
    differences = sum(
        abs(ours[key]["totalRequests"] - t["totalRequests"])
        for key, t in zip(("default", "fallback"), theirs)
    )
    twice = 0
    if not isinstance(accepted, int):
        for correlation_id in accepted:
            found = [p.admin("GET", f"/payments/{correlation_id}").status for p in processors]
            twice += found.count(200) > 1
    print(
        f"\n{name}: accepted {count} / processed {processed} / lost {max(count - processed, 0)} / "
        f"charged twice {twice} / audit differences {differences}"
    )
    assert processed == ours_total
    assert count <= processed <= count + unread
    assert twice == 0
    assert differences == 0


def test_processor_killed_mid_request_and_restarted(
    processor_factory: Callable[..., Any], service_factory: Callable[..., Service]
) -> None:
    default = processor_factory(fee="0.07", rate_limit_seconds=0.2)
    fallback = processor_factory(fee="0.10", rate_limit_seconds=0.2)
    default.set_delay(500)
    service = service_factory(
        "--processor-timeout",
        "0.9",
        "--settle-after",
        "1",
        default_url=default.url,
        fallback_url=fallback.url,
    )
    accepted = asyncio.run(pay_concurrently(service.url, 100))
    # Everything is held inside the default when it dies: none of it was stored.
    default.process.stop(9)
    replacement = processor_factory(fee="0.07", port=default.port, rate_limit_seconds=0.2)
    ours = service.wait_settled(timeout=60)
    figures("default killed mid-request", accepted, [replacement, fallback], ours)


def test_five_second_delays_are_waited_out_on_the_default(
    service: Service, fresh_processors: Any
) -> None:
    fresh_processors.default.set_delay(5000)
    accepted = asyncio.run(pay_concurrently(service.url, 20, senders=20))
    ours = service.wait_settled(timeout=30)
    figures(
        "default at 5 s", accepted, [fresh_processors.default, fresh_processors.fallback], ours
    )
    assert ours["fallback"]["totalRequests"] == 0


def test_limiter_429s_are_retried(
    processor_factory: Callable[..., Any], service_factory: Callable[..., Service]
) -> None:
    default = processor_factory(fee="0.07", max_in_flight=5, max_queued=5, rate_limit_seconds=0.2)
    fallback = processor_factory(fee="0.10", max_in_flight=5, max_queued=5, rate_limit_seconds=0.2)
    default.set_delay(100)
    fallback.set_delay(100)
    service = service_factory(default_url=default.url, fallback_url=fallback.url)
    accepted = asyncio.run(pay_concurrently(service.url, 300))
    ours = service.wait_settled(timeout=60)
    figures("processors' limiter answering 429", accepted, [default, fallback], ours)


def test_both_processors_down_then_back(service: Service, fresh_processors: Any) -> None:
    fresh_processors.default.set_failure(True)
    fresh_processors.fallback.set_failure(True)
    down_for = 60.0 if LONG else 3.0
    deadline = time.monotonic() + down_for
    accepted: list[str] = []
    while time.monotonic() < deadline:
        accepted += asyncio.run(pay_concurrently(service.url, 50, senders=10))
        assert service.summary()["pending"]["totalRequests"] == len(accepted)
    fresh_processors.default.set_failure(False)
    fresh_processors.fallback.set_failure(False)
    # The backlog drains at --max-send-rate (300/s): 3 s of this load take most of a minute.
    ours = service.wait_settled(timeout=180)
    figures(
        f"both down for {down_for:.0f} s",
        accepted,
        [fresh_processors.default, fresh_processors.fallback],
        ours,
    )


def test_overload_is_refused_and_what_is_accepted_is_kept(
    stack: StackUnderTest, fresh_processors: Any
) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    seconds = 30 if LONG else 3
    if LONG:
        # Slow processors drain ~750 payments/s: 30 s at several thousand a second fill the
        # replicas' buffers, and the excess must be refused.
        fresh_processors.default.set_delay(1000)
    # wrk's closed loop over 100 connections asks far more than the contest's ~600/s peak.
    command = ["wrk", "-t2", "-c100", f"-d{seconds}s", "-s", str(POST_LUA)]
    load = subprocess.Popen(
        [*command, f"http://127.0.0.1:{stack.port}"], stdout=subprocess.PIPE, text=True
    )
    peak_rss_kb = 0
    while load.poll() is None:
        peak_rss_kb = max(peak_rss_kb, sum(rss_kb(pid) for pid in children(stack.popen.pid)))
        time.sleep(0.2)
    output = load.stdout.read() if load.stdout else ""
    sent = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    refused_match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    refused = int(refused_match.group(1)) if refused_match else 0
    assert stack.popen.poll() is None
    ours = stack.wait_settled(timeout=120)
    print(
        f"\noverload: {sent} requests in {seconds} s ({sent / seconds:.0f}/s), {refused} refused, "
        f"peak RSS of HAProxy and replicas {peak_rss_kb / 1024:.0f} MB"
    )
    processors = [fresh_processors.default, fresh_processors.fallback]
    figures("overload", sent - refused, processors, ours, unread=100)
    if LONG:
        assert refused > 0
    assert peak_rss_kb < 350 * 1024


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return int(match.group(1)) if match else 0
