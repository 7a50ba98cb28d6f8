"""The outbound side: keep-alive HTTP/1.1 connections to each processor on httptools' response
parser, answers mapped at one boundary.

Wire below API: `_Connection` is one connection, one request at a time, its answer read whole
(the processors' answers are a few dozen bytes); `ProcessorClient` keeps the idle ones, makes
new ones on demand, and turns what happened into an `Outcome`. How many calls are in flight is
the dispatcher's to bound. This replaced an aiohttp session: in the same session and scenario
it halved the replicas' CPU per payment (README, "Dependencies").

Every attempt ends in exactly one `Outcome`. Only CONFIRMED and DUPLICATE prove the processor
stored the payment; REFUSED proves it did not (SPEC.md §3: a 500 stores nothing, a 429 comes
from the limiter, a connection that could not be made never reached it); UNKNOWN — a timeout,
a reset, an answer we cannot read — may have gone either way and must be settled on the same
processor.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
import orjson

from rinha.clock import parse_us


class Outcome(enum.Enum):
    CONFIRMED = "confirmed"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class StoredPayment:
    requested_at_ms: int
    cents: int


@dataclass(frozen=True, slots=True)
class HealthReport:
    failing: bool
    min_response_ms: int


_BY_STATUS = {200: Outcome.CONFIRMED, 422: Outcome.DUPLICATE, 429: Outcome.REFUSED}


def _outcome_of(status: int) -> Outcome:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    # 500 is the processor's "failing"; other 4xx mean it rejected the request unstored.
    if status == 500 or 400 <= status < 500:
        return Outcome.REFUSED
    return Outcome.UNKNOWN


class _NotConnected(Exception):
    """No connection could be made: the request never left."""


# Answers a processor gives: status and body.
_Answer = tuple[int, bytes]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer read whole."""

    def __init__(self, idle: list[_Connection]) -> None:
        self._idle = idle
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[_Answer] | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.abandon(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self in self._idle:
            self._idle.remove(self)
        self.abandon(exc or ConnectionResetError("the processor closed the connection"))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        body, self._body = b"".join(self._body), []
        if answer is None or answer.done():
            self.close()  # an answer nobody asked for: the connection cannot be trusted
            return
        answer.set_result((self._parser.get_status_code(), body))
        if self._parser.should_keep_alive():
            self._idle.append(self)
        else:
            self.close()

    def request(self, data: bytes) -> asyncio.Future[_Answer]:
        assert self._transport is not None and self._answer is None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return self._answer

    def abandon(self, error: BaseException) -> None:
        """Fail the request in flight, if any, with `error`, and close."""
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()


class ProcessorClient:
    def __init__(self, name: str, base_url: str, *, timeout: float) -> None:
        self.name = name
        url = urlsplit(base_url)
        self._host = url.hostname or "localhost"
        self._port = url.port or 80
        path = url.path.rstrip("/") + "/payments"
        host = f"Host: {url.netloc}\r\n".encode()
        self._post_head = b"POST %s HTTP/1.1\r\n%sContent-Type: application/json\r\n" % (
            path.encode(),
            host,
        )
        self._get_head = b"GET %s" % path.encode()
        self._get_tail = b" HTTP/1.1\r\n" + host + b"\r\n"
        self._timeout = timeout
        self._idle: list[_Connection] = []

    async def _call(self, data: bytes) -> _Answer:
        """Raises _NotConnected when the request never left; anything else after it did."""
        loop = asyncio.get_running_loop()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely closed
            if connection.usable:
                break
        else:
            connection = await self._connect()
        answer = connection.request(data)
        # One timer per call, for the whole call: above the processors' worst delay.
        timer = loop.call_later(self._timeout, connection.abandon, TimeoutError())
        try:
            return await answer
        finally:
            timer.cancel()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self._idle), self._host, self._port),
                self._timeout,
            )
        except (OSError, TimeoutError) as error:
            raise _NotConnected(str(error)) from error
        return connection

    async def send(self, body: bytes) -> Outcome:
        data = self._post_head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        try:
            status, _ = await self._call(data)
        except _NotConnected:
            return Outcome.REFUSED
        except (OSError, TimeoutError, httptools.HttpParserError):
            return Outcome.UNKNOWN
        return _outcome_of(status)

    async def _get(self, suffix: bytes) -> _Answer | None:
        try:
            return await self._call(self._get_head + suffix + self._get_tail)
        except (_NotConnected, OSError, TimeoutError, httptools.HttpParserError):
            return None

    async def lookup(self, correlation_id: str) -> StoredPayment | None | Outcome:
        """The stored payment, None when the processor has none, UNKNOWN when it cannot say."""
        answer = await self._get(b"/" + correlation_id.encode())
        if answer is None:
            return Outcome.UNKNOWN
        status, body = answer
        if status == 404:
            return None
        if status != 200:
            return Outcome.UNKNOWN
        try:
            stored = orjson.loads(body)
            return StoredPayment(
                parse_us(stored["requestedAt"]) // 1000, round(stored["amount"] * 100)
            )
        except (ValueError, KeyError, TypeError):
            return Outcome.UNKNOWN

    async def health(self) -> HealthReport | None:
        """The health endpoint's answer, or None when rate limited or unreachable."""
        answer = await self._get(b"/service-health")
        if answer is None or answer[0] != 200:
            return None
        try:
            report = orjson.loads(answer[1])
            return HealthReport(bool(report["failing"]), int(report["minResponseTime"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
