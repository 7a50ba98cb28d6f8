"""Raw bytes on a socket, for what an HTTP client library would not send or would hide."""

from __future__ import annotations

import socket

from tests.support.processes import Reply


def exchange(
    address: int | str | tuple[str, int], *pieces: bytes, half_close: bool = False
) -> bytes:
    """Send each piece in its own write to a port on 127.0.0.1, a unix socket or a (host, port),
    then read until the server closes. `half_close` stops sending after the last piece. The
    server may close before reading everything, or reset: what came before is its answer."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(address)
    else:
        target = ("127.0.0.1", address) if isinstance(address, int) else address
        sock = socket.create_connection(target, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = b""
    with sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def unix_call(socket_path: str, method: str, path: str, body: bytes = b"") -> Reply:
    """One HTTP request over a unix socket (a replica's control socket or public listener)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: r\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    status_line, _, rest = exchange(socket_path, head.encode() + body).partition(b"\r\n")
    lines, _, answer = rest.partition(b"\r\n\r\n")
    headers = dict(line.decode().lower().split(": ", 1) for line in lines.split(b"\r\n") if line)
    return Reply(int(status_line.split()[1]), headers, answer)


def pipelined(port: int, requests: list[bytes]) -> list[int]:
    """Send `requests` in one write on one connection; the statuses of their answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        data = b""
        statuses: list[int] = []
        while len(statuses) < len(requests):
            head_end = data.find(b"\r\n\r\n")
            if head_end < 0:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {statuses}"
                data += chunk
                continue
            head = data[:head_end].decode("latin-1").lower().split("\r\n")
            length = next(int(line[15:]) for line in head if line.startswith("content-length:"))
            if len(data) < head_end + 4 + length:
                data += sock.recv(65536)
                continue
            statuses.append(int(head[0].split()[1]))
            data = data[head_end + 4 + length :]
        return statuses
