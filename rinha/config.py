"""The service's settings, read once from the command line and the environment."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_MAX_IN_FLIGHT = 260
STORE_SCHEMES = ("mongodb://", "mongodb+srv://")


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How accepted payments travel to the processors (rinha/delivery/)."""

    buffer_capacity: int
    max_send_rate: float
    settle_after: float
    max_hold: float
    spill_after: float
    stamp_ahead_ms: int


@dataclass(frozen=True, slots=True)
class OneHost:
    """Replicas on one host that read each other's journals (rinha/cluster/host.py); with no
    peer, a lone replica."""

    control: str | None  # this replica's control socket
    peers: tuple[tuple[str, str], ...]  # each peer's control socket and journal
    poll_health: bool
    max_in_flight: int  # per processor, from this replica


@dataclass(frozen=True, slots=True)
class SharedStore:
    """Replicas on any hosts that share a MongoDB store (rinha/cluster/store/)."""

    url: str


Topology = OneHost | SharedStore


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    host: str
    port: int | None
    unix: str | None
    metrics_host: str
    metrics_port: int | None
    topology: Topology
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
    listen = parser.add_argument_group("where it listens")
    listen.add_argument("--host", default="0.0.0.0", help="TCP address (default %(default)s)")
    listen.add_argument(
        "--port", type=int, default=9999, help="TCP port; 0 disables TCP (default %(default)s)"
    )
    listen.add_argument("--unix", metavar="PATH", help="also listen on this unix socket")
    listen.add_argument(
        "--metrics-port",
        type=number(int, 1, 65535),
        help="serve Prometheus metrics at /metrics on this TCP port, never on the public one "
        "(default: none)",
    )
    listen.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics port: a scraper in another container needs 0.0.0.0 "
        "(default %(default)s)",
    )
    kept = parser.add_argument_group("what survives a crash")
    journal = kept.add_mutually_exclusive_group()
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
    kept.add_argument(
        "--journal-fsync",
        action="store_true",
        help="flush the journal to disk before each 202 (survives power loss; slower)",
    )
    add_one_host_options(
        parser.add_argument_group(
            "replicas on one host",
            "Not with RINHA_LEDGER, where the replicas share a MongoDB store instead.",
        )
    )
    delivery = parser.add_argument_group("delivery to the processors")
    delivery.add_argument(
        "--buffer-capacity",
        type=number(int, 1),
        default=16384,
        help="payments accepted and not yet confirmed by a processor; beyond it POST answers "
        "429 (default %(default)s)",
    )
    delivery.add_argument(
        "--max-send-rate",
        type=number(float, 0.001),
        default=300.0,
        help="deliveries started per second at most, so a draining backlog leaves the event "
        "loop free to answer (default %(default)s)",
    )
    delivery.add_argument(
        "--max-hold",
        type=number(float, 0),
        default=70.0,
        help="seconds a payment waits for a failing default processor before it may go to "
        "the fallback; 0 sends it there at once (default %(default)s)",
    )
    delivery.add_argument(
        "--spill-after",
        type=number(float, 0),
        default=1.0,
        help="seconds a payment may expect to wait for a free slot on a slow default before "
        "it goes to a working fallback instead (default %(default)s)",
    )
    delivery.add_argument(
        "--stamp-ahead-ms",
        type=number(int, 0),
        default=100,
        help="requestedAt is the send time plus the processor's announced delay plus this, so "
        "a payment the processor stores late is outside every audit window until both sides "
        "have it (default %(default)s)",
    )
    delivery.add_argument(
        "--processor-timeout",
        type=number(float, 0.001),
        default=15.0,
        help="seconds before a processor call is abandoned as unknown; keep it above the "
        "processors' worst delay (default %(default)s)",
    )
    delivery.add_argument(
        "--settle-after",
        type=number(float, 0.001),
        default=20.0,
        help="seconds after an unknown attempt before a lookup may release the payment to "
        "another processor; above --processor-timeout (default %(default)s)",
    )
    delivery.add_argument(
        "--health-interval",
        type=number(float, 0.001),
        default=5.0,
        help="seconds between health-endpoint calls per processor; the processors allow one "
        "per 5 s (default %(default)s)",
    )


def add_one_host_options(group: argparse._ActionsContainer) -> list[argparse.Action]:
    """The one-host shape's options; their actions, so that RINHA_LEDGER can refuse them."""
    control = group.add_argument(
        "--control",
        metavar="PATH",
        help="unix socket where peer replicas reach this one",
    )
    peer = group.add_argument(
        "--peer",
        nargs=2,
        metavar=("CONTROL", "JOURNAL"),
        action="append",
        default=[],
        help="another replica on this host: its control socket and its journal, which "
        "summaries read; repeat for each",
    )
    no_health_poll = group.add_argument(
        "--no-health-poll",
        action="store_true",
        help="do not call the processors' health endpoint: another replica polls it and "
        "pushes its reports here",
    )
    max_in_flight = group.add_argument(
        "--max-in-flight",
        type=number(int, 1),
        default=DEFAULT_MAX_IN_FLIGHT,
        help="payments on one processor at once from this replica, fresh or being settled; "
        "the processors take 800 from all replicas together (default %(default)s)",
    )
    return [control, peer, no_health_poll, max_in_flight]


def topology(
    args: argparse.Namespace, environ: Mapping[str, str], journal: str | None
) -> Topology:
    """The store RINHA_LEDGER names, or this host's peers; ValueError for a mix of both."""
    url = environ.get("RINHA_LEDGER") or None
    if url is None:
        if args.peer and journal is None:
            raise ValueError("--peer needs this replica's journal: its peers read it")
        return OneHost(
            control=args.control,
            peers=tuple((control, peer_journal) for control, peer_journal in args.peer),
            poll_health=not args.no_health_poll,
            max_in_flight=args.max_in_flight,
        )
    if not url.startswith(STORE_SCHEMES):
        raise ValueError(f"RINHA_LEDGER must be empty or a mongodb:// URL, not {url!r}")
    for action in add_one_host_options(argparse.ArgumentParser(add_help=False)):
        if getattr(args, action.dest) != action.default:
            raise ValueError(
                f"{action.option_strings[0]} does not apply with RINHA_LEDGER: the replicas "
                "share the store"
            )
    return SharedStore(url)


def service_config(args: argparse.Namespace, environ: Mapping[str, str]) -> ServiceConfig:
    """Raises ValueError for settings that cannot work together."""
    if args.settle_after <= args.processor_timeout:
        raise ValueError(
            "--settle-after must be above --processor-timeout: an attempt still in flight "
            "could be stored after its payment went elsewhere"
        )
    journal = None if args.no_journal else args.journal or default_journal(args, environ)
    return ServiceConfig(
        host=args.host,
        port=args.port or None,
        unix=args.unix,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        topology=topology(args, environ, journal),
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
            max_send_rate=args.max_send_rate,
            settle_after=args.settle_after,
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
