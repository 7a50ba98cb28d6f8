"""`python -m rinha serve` and its options."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvloop

from rinha.config import add_service_options, service_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rinha",
        description="A payment intermediary for the two payment processors. Processor URLs "
        "come from PROCESSOR_DEFAULT_URL and PROCESSOR_FALLBACK_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one service instance")
    add_service_options(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "serve":
        from rinha.service import run_service

        config = service_config(args, os.environ)
        try:
            uvloop.run(run_service(config))
        except OSError as error:
            print(f"rinha: cannot listen: {error}", file=sys.stderr)
            return 1
    return 0
