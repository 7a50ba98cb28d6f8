"""The service's settings, read once from the command line and the environment."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from rinha.ledger import STORE_SCHEMES

DEFAULT_MAX_IN_FLIGHT = 260


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How accepted payments travel to the processors (rinha/dispatcher.py)."""

    buffer_capacity: int
    max_in_flight: int
    max_send_rate: float
    settle_after: float
    probe_gap: float
    max_hold: float
    spill_after: float
    stamp_ahead_ms: int


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    host: str
    port: int | None
    unix: str | None
    control: str | None
    metrics_host: str
    metrics_port: int | None
    peers: tuple[tuple[str, str], ...]  # each peer's control socket and journal
    poll_health: bool
    ledger_url: str | None
    journal: str | None
    journal_fsync: bool
    processor_urls: dict[str, str]
    processor_timeout: float
    health_interval: float
    dispatch: DispatchSettings


def number(
    kind: type[int | float], low: float, high: float = math.inf
) -> Callable[[str], int | float]:
    """An argparse type: a `kind` number in [low, high]."""

    def read(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            bounds = f"at least {low}" if high == math.inf else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}: {text!r}")
        return value

    return read


def add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="TCP address (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=9999, help="TCP port; 0 disables TCP (default %(default)s)"
    )
    parser.add_argument("--unix", metavar="PATH", help="also listen on this unix socket")
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="unix socket where peer replicas reach this one's ledger (cluster mode)",
    )
    parser.add_argument(
        "--metrics-port",
        type=number(int, 1, 65535),
        help="serve Prometheus metrics at /metrics on this TCP port, never on the public one "
        "(default: none)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics port: a scraper in another container needs 0.0.0.0 "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--peer",
        nargs=2,
        metavar=("CONTROL", "JOURNAL"),
        action="append",
        default=[],
        help="another replica on this host: its control socket and its journal, which "
        "summaries read; repeat for each (cluster mode)",
    )
    parser.add_argument(
        "--no-health-poll",
        action="store_true",
        help="do not call the processors' health endpoint: another replica polls it and "
        "pushes its reports here",
    )
    journal = parser.add_mutually_exclusive_group()
    journal.add_argument(
        "--journal",
        metavar="PATH",
        help="append-only file that keeps accepted and confirmed payments across a crash "
        "(default: journal-PORT in $XDG_STATE_HOME/rinha, or ~/.local/state/rinha)",
    )
    journal.add_argument(
        "--no-journal",
        action="store_true",
        help="keep nothing on disk: a crash loses every payment the replica held",
    )
    parser.add_argument(
        "--journal-fsync",
        action="store_true",
        help="flush the journal to disk before each 202 (survives power loss; slower)",
    )
    parser.add_argument(
        "--buffer-capacity",
        type=number(int, 1),
        default=16384,
        help="payments accepted and not yet confirmed by a processor; beyond it POST answers "
        "429 (default %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=number(int, 1),
        help="payments on one processor at once, fresh or being settled; the processors take "
        "800 from all replicas together (default 260; with RINHA_LEDGER the store's leases "
        "divide 780 among the live replicas)",
    )
    parser.add_argument(
        "--max-send-rate",
        type=number(float, 0.001),
        default=300.0,
        help="deliveries started per second at most, so a draining backlog leaves the event "
        "loop free to answer (default %(default)s)",
    )
    parser.add_argument(
        "--spill-after",
        type=number(float, 0),
        default=1.0,
        help="seconds a payment may expect to wait for a free slot on a slow default before "
        "it goes to a working fallback instead (default %(default)s)",
    )
    parser.add_argument(
        "--stamp-ahead-ms",
        type=int,
        default=100,
        help="requestedAt is the send time plus the processor's announced delay plus this, so "
        "a payment the processor stores late is outside every audit window until both sides "
        "have it (default %(default)s)",
    )
    parser.add_argument(
        "--processor-timeout",
        type=number(float, 0.001),
        default=15.0,
        help="seconds before a processor call is abandoned as unknown; keep it above the "
        "processors' worst delay (default %(default)s)",
    )
    parser.add_argument(
        "--settle-after",
        type=number(float, 0.001),
        default=20.0,
        help="seconds after an unknown attempt before a lookup may release the payment to "
        "another processor (default %(default)s)",
    )
    parser.add_argument(
        "--health-interval",
        type=number(float, 0.001),
        default=5.0,
        help="seconds between health-endpoint calls per processor; the processors allow one "
        "per 5 s (default %(default)s)",
    )
    parser.add_argument(
        "--max-hold",
        type=number(float, 0),
        default=70.0,
        help="seconds a payment waits for a failing default processor before it may go to "
        "the fallback; 0 sends it there at once (default %(default)s)",
    )
    parser.add_argument(
        "--probe-gap",
        type=number(float, 0.001),
        default=1.0,
        help="seconds between probes of a failing processor with a real payment (%(default)s)",
    )


def service_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServiceConfig:
    """Raises ValueError for a setting from the environment that cannot work."""
    ledger_url = environ.get("RINHA_LEDGER") or None
    if ledger_url is not None and not ledger_url.startswith(STORE_SCHEMES):
        raise ValueError(f"RINHA_LEDGER must be empty or a mongodb:// URL, not {ledger_url!r}")
    journal = None if args.no_journal else args.journal or default_journal(args, environ)
    if args.peer and journal is None:
        raise ValueError("--peer needs this replica's journal: its peers read it")
    if ledger_url is not None:
        given = [
            option
            for option, value in (
                ("--peer", args.peer),
                ("--control", args.control),
                ("--no-health-poll", args.no_health_poll),
                ("--max-in-flight", args.max_in_flight),
            )
            if value
        ]
        if given:
            raise ValueError(
                f"{given[0]} does not apply with RINHA_LEDGER: the replicas share the store"
            )
    return ServiceConfig(
        host=args.host,
        port=args.port or None,
        unix=args.unix,
        control=args.control,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        peers=tuple((control, peer_journal) for control, peer_journal in args.peer),
        poll_health=not args.no_health_poll,
        ledger_url=ledger_url,
        journal=journal,
        journal_fsync=args.journal_fsync,
        processor_urls={
            "default": environ.get(
                "PROCESSOR_DEFAULT_URL", "http://payment-processor-default:8080"
            ),
            "fallback": environ.get(
                "PROCESSOR_FALLBACK_URL", "http://payment-processor-fallback:8080"
            ),
        },
        processor_timeout=args.processor_timeout,
        health_interval=args.health_interval,
        dispatch=DispatchSettings(
            buffer_capacity=args.buffer_capacity,
            max_in_flight=args.max_in_flight or DEFAULT_MAX_IN_FLIGHT,
            max_send_rate=args.max_send_rate,
            settle_after=args.settle_after,
            probe_gap=args.probe_gap,
            max_hold=args.max_hold,
            spill_after=args.spill_after,
            stamp_ahead_ms=args.stamp_ahead_ms,
        ),
    )


def default_journal(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """Where a replica keeps its journal unless told: the user's state directory, one file
    per public address, so that the same command started again finds it."""
    home = environ.get("HOME") or os.path.expanduser("~")
    state = environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    if args.port:
        address = str(args.port)
    elif args.unix:
        address = quote(os.path.abspath(args.unix), safe="")
    else:
        raise ValueError("nothing to listen on: give --port or --unix")
    return os.path.join(state, "rinha", f"journal-{address}")
