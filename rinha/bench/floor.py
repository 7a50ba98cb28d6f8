"""The floor: a do-nothing backend in rinha's place, so that a run's latency has a yardstick.

Three processes on the project's HTTP core (httptools) answer `POST /payments` 202 at once, a
summary of zeros and purge 200, and touch neither a store nor a processor. They run where the
replicas run, behind the same HAProxy and haproxy.cfg over unix sockets, beside the same
emulators, so `python -m rinha.bench k6 --floor` can put our p99 beside the lowest this machine
gives under the same k6 load in the same session. The processors receive nothing, so the
floor's audits agree and its score is zero: only its latency and CPU are read.

    python -m rinha.bench.floor serve --unix PATH       one floor process
    python -m rinha.bench.floor up [up's port options]  the floor stack, as `python -m rinha up`
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from rinha.http import HttpServer, Request, response
from rinha.stack import (
    Child,
    StackError,
    StackOptions,
    add_up_options,
    default_run_dir,
    plan,
    run_stack,
)

ACCEPTED = response(202)
SUMMARY = response(
    200,
    b'{"default":{"totalRequests":0,"totalAmount":0.00},'
    b'"fallback":{"totalRequests":0,"totalAmount":0.00}}',
)
PURGED = response(200, b'{"message":"All payments purged."}')
NOT_FOUND = response(404, b'{"error":"no such route"}')
# HAProxy's checks (haproxy/haproxy.cfg): without it every floor process is out of rotation.
READY = response(204)


def answer(request: Request) -> bytes:
    if request.path == b"/payments":
        return ACCEPTED
    if request.path == b"/payments-summary":
        return SUMMARY
    if request.path == b"/purge-payments":
        return PURGED
    if request.path == b"/ready":
        return READY
    return NOT_FOUND


async def serve(unix: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = HttpServer(answer)
    await server.listen_unix(unix)
    await stop.wait()
    await server.shutdown()


def floor_plan(options: StackOptions) -> list[Child]:
    """`python -m rinha up`'s children, each replica replaced by a floor process."""
    children = plan(options)
    for child in children:
        if child.name.startswith("replica"):
            child.command = [sys.executable, "-m", "rinha.bench.floor", "serve", "--unix"]
            child.command.append(str(child.address))
    return children


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rinha.bench.floor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="one floor process")
    serve_parser.add_argument("--unix", metavar="PATH", required=True)
    up = commands.add_parser("up", help="HAProxy, three floor processes and two emulators")
    add_up_options(up)
    args = parser.parse_args(argv)
    if args.command == "serve":
        uvloop.run(serve(args.unix))
        return 0
    options = StackOptions(
        args.port,
        args.stats_port,
        args.fees,
        args.processor_ports,
        None,
        default_run_dir(),
        args.cgroups,
    )
    try:
        return run_stack(options, floor_plan(options))
    except StackError as error:
        print(f"rinha floor: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
