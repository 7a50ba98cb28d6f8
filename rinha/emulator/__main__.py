"""`python -m rinha.emulator --port 8001 --fee 0.07`: run one emulated payment processor."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from decimal import Decimal, InvalidOperation

import uvloop

from rinha.config import number
from rinha.emulator.app import Processor
from rinha.emulator.settings import EmulatorSettings
from rinha.http import HttpServer


def _fee(text: str) -> Decimal:
    try:
        fee = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from None
    if not fee.is_finite() or fee < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative decimal: {text!r}")
    return fee


def parse_options(argv: list[str]) -> EmulatorSettings:
    parser = argparse.ArgumentParser(
        prog="python -m rinha.emulator",
        description="Emulate one payment processor of the Rinha de Backend 2025 (SPEC.md §3).",
    )
    parser.add_argument(
        "--fee",
        type=_fee,
        required=True,
        help="fee per payment as a fraction of its amount, e.g. 0.07",
    )
    parser.add_argument("--port", type=number(int, 1, 65535), help="listen on this TCP port")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address of the TCP listener (default: %(default)s)"
    )
    parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket")
    parser.add_argument(
        "--token",
        default="123",
        help="initial X-Rinha-Token of the /admin routes (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit-seconds",
        type=number(float, 0.001),
        default=5.0,
        metavar="SECONDS",
        help="length of the service-health window (default: %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=number(int, 1),
        default=800,
        metavar="N",
        help="payments in their delay/store phase at once (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued",
        type=number(int, 0),
        default=500,
        metavar="N",
        help="payments waiting for a slot before 429 (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.port is None and args.unix is None:
        parser.error("give --port, --unix or both")
    return EmulatorSettings(
        fee=args.fee,
        host=args.host,
        port=args.port,
        unix=args.unix,
        token=args.token,
        rate_limit_seconds=args.rate_limit_seconds,
        max_in_flight=args.max_in_flight,
        max_queued=args.max_queued,
    )


async def serve(options: EmulatorSettings) -> None:
    """Serve until SIGTERM or SIGINT, then stop listening and let answers drain."""
    server = HttpServer(Processor(options).handle)
    if options.port is not None:
        await server.listen_tcp(options.host, options.port)
    if options.unix is not None:
        await server.listen_unix(options.unix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.shutdown()
    if options.unix is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(options.unix)


def main() -> None:
    options = parse_options(sys.argv[1:])
    try:
        uvloop.run(serve(options))
    except OSError as exc:  # the port or socket path cannot be listened on
        sys.exit(f"python -m rinha.emulator: error: {exc}")


if __name__ == "__main__":
    main()
