"""`python -m rinha serve` and its options."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvloop

from rinha.config import add_service_options, service_config
from rinha.journal import JournalInUse
from rinha.stack import add_metrics_option, add_up_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rinha",
        description="A payment intermediary for the two payment processors. Processor URLs "
        "come from PROCESSOR_DEFAULT_URL and PROCESSOR_FALLBACK_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one service instance")
    add_service_options(serve)
    up = commands.add_parser(
        "up",
        help="run HAProxy, three replicas and, unless PROCESSOR_DEFAULT_URL and "
        "PROCESSOR_FALLBACK_URL are set, two processor emulators",
    )
    add_up_options(up)
    add_metrics_option(up)
    up.add_argument(
        "serve_options",
        nargs=argparse.REMAINDER,
        metavar="-- SERVE_OPTIONS",
        help="options after -- are given to every replica (see python -m rinha serve --help)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "serve":
        from rinha.service import run_service

        try:
            config = service_config(args, os.environ)
        except ValueError as error:
            print(f"rinha: {error}", file=sys.stderr)
            return 2
        try:
            uvloop.run(run_service(config))
        except JournalInUse as error:
            print(f"rinha: {error}", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"rinha: cannot start: {error}", file=sys.stderr)
            return 1
        return 0
    from rinha.stack import StackError, StackOptions, default_run_dir, plan, run_stack

    default_url = os.environ.get("PROCESSOR_DEFAULT_URL")
    fallback_url = os.environ.get("PROCESSOR_FALLBACK_URL")
    urls = None
    if default_url and fallback_url:
        urls = {"default": default_url, "fallback": fallback_url}
    serve_options = [option for option in args.serve_options if option != "--"]
    build_parser().parse_args(["serve", *serve_options])  # a bad one stops here, once
    options = StackOptions(
        args.port,
        args.stats_port,
        args.fees,
        args.processor_ports,
        urls,
        default_run_dir(),
        args.cgroups,
        tuple(serve_options),
        args.metrics_ports,
        shared_store=bool(os.environ.get("RINHA_LEDGER")),
    )
    try:
        return run_stack(options, plan(options))
    except StackError as error:
        print(f"rinha: {error}", file=sys.stderr)
        return 1
