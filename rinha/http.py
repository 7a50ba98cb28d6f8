"""HTTP/1.1 server protocol on httptools, shared by the service and the processor emulator.

Theory of operation
-------------------
One `HttpConnection` owns one client connection and its httptools parser. The parser's
callbacks only accumulate (`on_url` and `on_body` arrive in pieces); `on_message_complete`
builds a `Request` and hands it to the application's handler. A handler answers with the
whole response as `bytes` (written at once) or with a coroutine producing those bytes (run as
a task). Answers leave in request order, so pipelined requests work: an answer waits in
`_answers` behind the oldest unfinished one. Reading pauses while too many answers are
outstanding or while the transport's write buffer is full.

Framing errors are answered and end the connection: malformed HTTP → 400, a head or body over
its limit → 431 / 413, each with `connection: close`. A handler or parser callback that raises
anything else is our bug: the client gets 500 and the connection closes, the traceback goes to
the loop's exception handler.

Idle keep-alive connections are closed by one sweep per server rather than a timer per request;
the same sweep answers 408 and closes a connection whose request has not arrived whole within
`REQUEST_SECONDS` of its first byte, so a slow client cannot hold a connection without HAProxy
in front (HAProxy's own limit is 5 s).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httptools

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 4 * 1024
# More answers than this outstanding on one connection pause reading from it.
MAX_PIPELINED = 64
# From a request's first byte to its last, at most this long.
REQUEST_SECONDS = 5.0

_REASONS = {
    200: b"OK",
    202: b"Accepted",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: bytes = b"application/json",
    headers: bytes = b"",
    close: bool = False,
) -> bytes:
    """A whole HTTP/1.1 response. `headers` is extra raw header lines, each ending in CRLF."""
    head = _STATUS_LINES[status] + headers
    if body:
        head += b"content-type: " + content_type + b"\r\n"
    head += b"content-length: %d\r\n" % len(body)
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


def error_response(status: int, reason: str) -> bytes:
    """A 4xx/5xx answer whose JSON body carries a short reason; closes the connection."""
    return response(status, b'{"error":"%s"}' % reason.encode(), close=True)


BAD_REQUEST = error_response(400, "malformed HTTP request")
HEAD_TOO_LARGE = error_response(431, "request head too large")
BODY_TOO_LARGE = error_response(413, "request body too large")
INTERNAL_ERROR = error_response(500, "internal error")
REQUEST_TIMEOUT = error_response(408, "request not received in time")


@dataclass(slots=True)
class Request:
    method: bytes
    path: bytes
    query: bytes
    headers: dict[bytes, bytes]
    body: bytes


Answer = bytes | Coroutine[Any, Any, bytes]
Handler = Callable[[Request], Answer]


class _FramingError(Exception):
    """Raised from a parser callback to stop parsing; carries the answer to give."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer


class HttpConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, server: HttpServer) -> None:
        self._handler = handler
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # Each entry: the answer bytes, or the task computing them, and whether to close after.
        self._answers: deque[tuple[bytes | asyncio.Task[bytes], bool]] = deque()
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False
        self.last_active = 0.0
        self.reading_since: float | None = None  # a request's first byte, until its last
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self.last_active = self._loop.time()
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        for answer, _ in self._answers:
            if isinstance(answer, asyncio.Task):
                answer.remove_done_callback(self._flush)
        self._answers.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _FramingError):
                self._stop(cause.answer)
            else:  # a callback of ours failed: our bug, not the client's
                self._report(cause or exc)
                self._stop(INTERNAL_ERROR)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._stop(BAD_REQUEST)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.reading_since = self._loop.time()
        self._url = b""
        self._headers = {}
        self._head_size = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        # llhttp completes an upgrade (or CONNECT) message before it raises
        # HttpParserUpgrade, so the handler would act on it first: refuse it here.
        if self._parser.should_upgrade():
            raise _FramingError(BAD_REQUEST)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise _FramingError(BODY_TOO_LARGE)
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reading_since = None
        if self._closing:
            return
        path, _, query = self._url.partition(b"?")
        request = Request(
            self._parser.get_method(), path, query, self._headers, b"".join(self._body)
        )
        keep_alive = self._parser.should_keep_alive()
        try:
            answer = self._handler(request)
        except Exception as exc:  # noqa: BLE001 - a handler bug answers 500, not a dead server
            self._report(exc)
            self._stop(INTERNAL_ERROR)
            return
        if isinstance(answer, bytes):
            self._add(answer, not keep_alive)
        else:
            task = self._loop.create_task(answer)
            self._add(task, not keep_alive)
            task.add_done_callback(self._flush)
        if not keep_alive:
            self._closing = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    # internals

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise _FramingError(HEAD_TOO_LARGE)

    def _add(self, answer: bytes | asyncio.Task[bytes], close: bool) -> None:
        if not self._answers and isinstance(answer, bytes):
            self._write(answer, close)
            return
        self._answers.append((answer, close))
        self._update_reading()

    def _stop(self, answer: bytes) -> None:
        """Answer a framing error after every earlier answer, then close."""
        if self._closing:
            return
        self._add(answer, True)
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _flush(self, _task: object = None) -> None:
        while self._answers:
            answer, close = self._answers[0]
            if isinstance(answer, asyncio.Task):
                if not answer.done():
                    break
                answer = self._result(answer)
            self._answers.popleft()
            self._write(answer, close)
        self._update_reading()

    def _result(self, task: asyncio.Task[bytes]) -> bytes:
        if task.cancelled():
            return INTERNAL_ERROR
        exc = task.exception()
        if exc is not None:
            self._report(exc)
            return INTERNAL_ERROR
        return task.result()

    def _write(self, answer: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        self.last_active = self._loop.time()
        if close or answer is INTERNAL_ERROR:
            transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing or transport.is_closing():
            return
        should_pause = self._writing_paused or len(self._answers) > MAX_PIPELINED
        if should_pause != self._reading_paused:
            self._reading_paused = should_pause
            if should_pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _report(self, exc: BaseException) -> None:
        self._loop.call_exception_handler(
            {"message": "HTTP handler failed", "exception": exc, "protocol": self}
        )

    @property
    def idle(self) -> bool:
        return not self._answers

    def time_out(self) -> None:
        """The request under way took too long to arrive: answer 408 and close."""
        self.reading_since = None
        self._stop(REQUEST_TIMEOUT)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class HttpServer:
    """Listeners sharing one handler; closes idle keep-alive connections in one periodic sweep."""

    def __init__(self, handler: Handler, *, keep_alive_seconds: float = 300.0) -> None:
        self.handler = handler
        self.keep_alive_seconds = keep_alive_seconds
        self.connections: set[HttpConnection] = set()
        self._listeners: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def _protocol(self) -> HttpConnection:
        return HttpConnection(self.handler, self)

    async def listen_tcp(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(self._protocol, host, port, backlog=4096)
        self._start(listener)

    async def listen_unix(self, path: str) -> None:
        # A socket file left by a killed process would make the bind fail.
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        listener = await loop.create_unix_server(self._protocol, path, backlog=4096)
        self._start(listener)

    def _start(self, listener: asyncio.AbstractServer) -> None:
        self._listeners.append(listener)
        if self._sweeper is None:
            self._sweep()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        idle_before, started_before = now - self.keep_alive_seconds, now - REQUEST_SECONDS
        for connection in list(self.connections):
            if connection.reading_since is not None and connection.reading_since < started_before:
                connection.time_out()
            elif connection.idle and connection.last_active < idle_before:
                connection.close()
        # Every second: a late request is cut off between 5 and 6 s after its first byte.
        self._sweeper = loop.call_later(min(self.keep_alive_seconds, 1.0), self._sweep)

    async def shutdown(self, drain_seconds: float = 5.0) -> None:
        """Stop listening, let outstanding answers go out, then close what is left."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for listener in self._listeners:
            listener.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while any(not c.idle for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.close()
