"""The comparison point for the hot path: a minimal aiohttp.web handler doing the same work as
`POST /payments` (parse, validate, refuse replays, enqueue, answer 202)."""

from __future__ import annotations

import argparse
from collections import deque

from aiohttp import web

from rinha.payments import BadInput, Payment, parse_payment


def build_app(capacity: int) -> web.Application:
    queue: deque[Payment] = deque()
    accepted: set[str] = set()

    async def accept(request: web.Request) -> web.Response:
        try:
            payment = parse_payment(await request.read())
        except BadInput as error:
            return web.json_response({"error": error.reason}, status=error.status)
        if payment.correlation_id not in accepted:
            if len(queue) >= capacity:
                return web.json_response({"error": "too many pending payments"}, status=429)
            queue.append(payment)
            accepted.add(payment.correlation_id)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/payments", accept)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--capacity", type=int, default=10_000_000)
    args = parser.parse_args()
    import uvloop

    web.run_app(
        build_app(args.capacity),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
