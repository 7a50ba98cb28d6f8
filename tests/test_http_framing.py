"""HTTP/1.1 framing of the service's own protocol (rinha/http.py), over raw sockets: keep-alive,
pipelining, fragmentation, Connection: close, and malformed or oversized requests."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from rinha.http import HttpServer
from tests.support.clients import Service
from tests.support.processes import free_port
from tests.support.wire import exchange


def payment_request(close: bool = False) -> bytes:
    body = b'{"correlationId":"%s","amount":19.90}' % str(uuid.uuid4()).encode()
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST /payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (len(body), connection, body)
    )


SUMMARY = b"GET /payments-summary HTTP/1.1\r\nHost: t\r\n\r\n"
CLOSE = b"GET /payments-summary HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def statuses(received: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def test_keep_alive_answers_each_request_on_one_connection(service: Service) -> None:
    received = exchange(service.port, payment_request(), SUMMARY, CLOSE)
    assert statuses(received) == [202, 200, 200]


def test_pipelined_requests_are_answered_in_order(service: Service) -> None:
    # The summary is answered by a task, the payments at once: order must still hold.
    batch = (
        SUMMARY + payment_request() + b"POST /payments HTTP/1.1\r\nContent-Length: 3\r\n\r\nbad"
    )
    received = exchange(service.port, batch + SUMMARY + CLOSE)
    assert statuses(received) == [200, 202, 400, 200, 200]


def test_request_fed_byte_by_byte(service: Service) -> None:
    request = payment_request(close=True)
    received = exchange(service.port, *(request[i : i + 1] for i in range(len(request))))
    assert statuses(received) == [202]


def test_connection_close_is_honoured(service: Service) -> None:
    # exchange() only returns once the server has closed.
    assert statuses(exchange(service.port, payment_request(close=True))) == [202]


def test_http_1_0_closes_after_the_answer(service: Service) -> None:
    assert statuses(exchange(service.port, b"GET /payments-summary HTTP/1.0\r\n\r\n")) == [200]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"POST /payments HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /payments-summary HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"POST /payments HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"{" * 5000, 413),
        (
            b"POST /payments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n" + b"a" * 8192,
            413,
        ),
    ],
)
def test_bad_framing_gets_an_error_and_a_close(
    service: Service, request_bytes: bytes, status: int
) -> None:
    received = exchange(service.port, request_bytes)
    assert statuses(received) == [status]
    assert b"connection: close" in received
    summary = service.summary()
    assert summary["pending"]["totalRequests"] == 0
    assert summary["default"]["totalRequests"] == 0


def test_answers_before_the_bad_request_still_arrive(service: Service) -> None:
    received = exchange(service.port, payment_request() + SUMMARY + b"GARBAGE\r\n\r\n")
    assert statuses(received) == [202, 200, 400]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/payments/abc", 404),
        ("GET", "/payments", 405),
        ("PUT", "/payments", 405),
        ("POST", "/payments-summary", 405),
        ("GET", "/purge-payments", 405),
        ("GET", "/control/summary", 404),
        ("GET", "/ready", 204),
        ("POST", "/ready", 405),
    ],
)
def test_routes(service: Service, method: str, path: str, status: int) -> None:
    request = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    assert statuses(exchange(service.port, request)) == [status]


@pytest.mark.parametrize(
    "head",
    [
        (
            b"POST /purge-payments HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n"
            b"Upgrade: websocket\r\nContent-Length: 0\r\n\r\n"
        ),
        b"CONNECT /purge-payments HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
)
def test_an_upgrade_is_refused_before_anything_acts(service: Service, head: bytes) -> None:
    assert service.pay().status == 202
    service.wait_settled()
    received = exchange(service.port, head)
    assert statuses(received) == [400]
    assert service.summary()["default"]["totalRequests"] == 1  # not purged


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/control/purge"), ("GET", "/control/health")],
)
def test_control_routes_refuse_another_method(
    service_factory: Callable[..., Service], tmp_path: Path, method: str, path: str
) -> None:
    control = str(tmp_path / "control")
    service = service_factory("--control", control)
    assert service.pay().status == 202
    service.wait_settled()
    request = f"{method} {path} HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n".encode()
    assert statuses(exchange(control, request)) == [405]
    assert service.summary()["default"]["totalRequests"] == 1


def test_a_request_that_does_not_arrive_whole_is_cut_off(service: Service) -> None:
    # Without HAProxy in front, a slow client must not hold a connection: 408, then closed.
    with socket.create_connection(("127.0.0.1", service.port), timeout=20) as sock:
        sock.sendall(b"POST /payments HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert statuses(received) == [408]
    assert service.summary()["pending"]["totalRequests"] == 0


def test_a_bug_of_ours_inside_a_parser_callback_is_a_500() -> None:
    # The protocol runs in this process over a real socket, with a handler that breaks its
    # contract (neither bytes nor a coroutine): the failure surfaces inside llhttp's
    # on_message_complete, as HttpParserCallbackError, and is still ours, not the client's.
    async def scenario() -> bytes:
        server = HttpServer(lambda request: 42)  # type: ignore[arg-type, return-value]
        port = free_port()
        await server.listen_tcp("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await server.shutdown()
        return received

    assert statuses(uvloop.run(scenario())) == [500]
