"""Bad input of every kind, generated (SPEC.md §2: a clear 4xx, and nothing changes).

Malformed request lines and headers, huge heads, truncated or oversized bodies, pipelined
garbage, and well-framed payments whose JSON is wrong in one way or another, sent to a replica
directly and through HAProxy. Every case must end in a 4xx or a closed connection; afterwards
no process has died, the ledger and the pending set are still empty, and the replica's memory
has stayed within bounds.

CI runs a few thousand cases; `RINHA_FUZZ_CASES=100000 python -m pytest tests/test_fuzz.py -s`
is the long run. Each test prints its case count.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.clients import Service, StackUnderTest
from tests.support.wire import exchange

CASES = int(os.environ.get("RINHA_FUZZ_CASES", "1500"))
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
UUID = "0b7e6c2a-4a6b-4c1e-9a55-5d1a2b3c4d5e"
# What a replica may grow by while answering garbage: its buffers are bounded per connection.
MEMORY_SLACK_KB = 20_000

tokens = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
raw_bytes = st.binary(max_size=3000)

request_lines = st.one_of(
    st.builds(lambda b: b + b"\r\n\r\n", raw_bytes),
    st.builds(
        lambda m, p, v: f"{m} {p} {v}\r\n\r\n".encode(),
        tokens,
        tokens,
        st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "FOO"]),
    ),
)

header_lines = st.lists(
    st.one_of(
        st.builds(lambda n, v: n.encode() + b": " + v, tokens, st.binary(max_size=200)),
        st.builds(lambda n: n.encode() + b": " + b"x" * 20_000, tokens),
        st.sampled_from(
            [
                b"Content-Length: -1",
                b"Content-Length: 99999999999999999999",
                b"Content-Length: 5\r\nContent-Length: 6",
                b"Transfer-Encoding: chunked",
                b"Transfer-Encoding: gzip, chunked",
                b"Expect: 100-continue",
                b"Connection: upgrade\r\nUpgrade: websocket",
                b"no colon here",
                b" folded: header",
            ]
        ),
    ),
    max_size=6,
)


def frame(method: bytes, path: bytes, headers: list[bytes], body: bytes) -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: fuzz\r\n" % (method, path)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


requests_with_bad_framing = st.one_of(
    request_lines,
    st.builds(
        lambda hs, body: frame(b"POST", b"/payments", hs, body),
        header_lines,
        st.binary(max_size=300),
    ),
    # Bodies shorter than announced, then the client stops sending.
    st.builds(
        lambda body, extra: frame(
            b"POST", b"/payments", [b"Content-Length: %d" % (len(body) + extra)], body
        ),
        st.binary(max_size=100),
        st.integers(1, 5000),
    ),
    # Bodies over the limit.
    st.builds(
        lambda size: frame(b"POST", b"/payments", [b"Content-Length: %d" % size], b"{" * size),
        st.integers(4097, 20_000),
    ),
    # Several garbage requests pipelined.
    st.builds(lambda parts: b"".join(parts), st.lists(request_lines, min_size=2, max_size=5)),
)

bad_ids = st.one_of(
    st.text(max_size=40).filter(lambda t: not re.fullmatch(r"[0-9a-fA-F-]{36}", t)),
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
bad_amounts = st.one_of(
    st.floats(max_value=0),
    st.floats(min_value=0.001, max_value=1e6).filter(lambda a: round(a * 100) / 100 != a),
    st.floats(min_value=1e12),
    st.text(max_size=10),
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def encode(value: dict[str, Any]) -> bytes:
    # json.dumps writes NaN and Infinity, which are not JSON: both must be refused.
    return json.dumps(value).encode()


bad_payments = st.one_of(
    st.builds(lambda i, a: encode({"correlationId": i, "amount": a}), bad_ids, st.floats(1, 100)),
    st.builds(lambda a: encode({"correlationId": UUID, "amount": a}), bad_amounts),
    st.builds(lambda a: encode({"amount": a}), st.floats(1, 100)),
    st.builds(lambda i: encode({"correlationId": i}), st.just(UUID)),
    st.builds(encode, st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
    st.builds(lambda v: json.dumps(v).encode(), st.one_of(st.lists(st.integers()), st.text())),
    st.binary(max_size=200).filter(lambda b: b.strip()[:1] != b"{"),
)


def assert_refused(received: bytes) -> None:
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", received)]
    # A 1xx is interim, not an answer: HAProxy says "100 Continue" to an Expect header before
    # it reads the body; a body that never comes then ends in a close.
    final = [status for status in statuses if status >= 200]
    assert all(400 <= status < 500 for status in final), (statuses, received[:300])


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def assert_untouched(summary: dict[str, Any]) -> None:
    for name in ("default", "fallback", "pending"):
        assert summary[name]["totalRequests"] == 0, summary


@pytest.mark.parametrize("target", ["replica", "haproxy"])
def test_garbage_gets_4xx_or_a_close(
    target: str, service: Service, stack: StackUnderTest, fresh_processors: Any
) -> None:
    port = service.port if target == "replica" else stack.port
    assert service.process.popen is not None
    rss_before = rss_kb(service.process.popen.pid)
    count = 0

    @FUZZ
    @given(st.one_of(requests_with_bad_framing, bad_payments.map(payment_request)))
    # Found in a 100k-case run: HAProxy's interim "100 Continue", then a close.
    @example(
        frame(b"POST", b"/payments", [b"Transfer-Encoding: chunked", b"Expect: 100-continue"], b"")
    )
    def case(data: bytes) -> None:
        nonlocal count
        count += 1
        assert_refused(exchange(port, data, half_close=True))

    case()
    print(f"\n{target}: {count} cases, all refused")
    assert service.process.popen.poll() is None
    assert stack.popen.poll() is None
    assert rss_kb(service.process.popen.pid) - rss_before < MEMORY_SLACK_KB
    assert_untouched(service.summary())
    assert_untouched(stack.summary())
    assert fresh_processors.default.summary()["totalRequests"] == 0
    assert fresh_processors.fallback.summary()["totalRequests"] == 0


def payment_request(body: bytes) -> bytes:
    return frame(
        b"POST",
        b"/payments",
        [b"Content-Type: application/json", b"Content-Length: %d" % len(body)],
        body,
    )


def test_bad_payments_get_a_reason(service: Service) -> None:
    count = 0

    @FUZZ
    @given(bad_payments)
    def case(body: bytes) -> None:
        nonlocal count
        count += 1
        received = exchange(service.port, payment_request(body), half_close=True)
        head, _, answer = received.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.1 4(00|22) ", head), (body, received)
        assert json.loads(answer)["error"]

    case()
    print(f"\nbad payments: {count} cases, each refused with a reason")
    assert_untouched(service.summary())
