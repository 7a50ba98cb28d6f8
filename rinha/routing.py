"""Where the next attempt goes: a pure function of what is known about both processors.

The default processor's fee is always the lower one (SPEC.md §1), so it is preferred whenever
it is not failing, however slow: a slow answer costs nothing once the client has its 202.

While the default fails, a payment waits for it up to `--max-hold` seconds since it was
accepted, and only then goes to the fallback. Waiting costs nothing the test measures (the
POST was answered long before) as long as the backlog drains before the test ends, and it
saves the fee difference on every held payment: in the final scenario the default fails for
60 s and then answers in 0 ms (SPEC.md §4). With both failing, payments are held.

A slow default that is not failing can still fall behind: the processor takes 800 calls at a
time, so at a 2 s delay it carries 400 payments a second, fewer than the test's peak. When the
payments queued for it would wait longer than `--spill-after` for a free slot, the default is
*saturated* and the next payment goes to a working fallback: a higher fee beats a payment still
unprocessed when the test ends.

A failing processor is re-tried with one probe at a time, sent with a real payment (a refused
probe costs nothing: the payment is retried), so recovery is seen before the next health report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Route(enum.Enum):
    DEFAULT = "default"
    FALLBACK = "fallback"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class ProcessorView:
    """What one processor looks like now, from health reports and real answers."""

    failing: bool
    probe_allowed: bool  # failing, but no probe is in flight and the last one is old enough


@dataclass(frozen=True, slots=True)
class RoutingState:
    default: ProcessorView
    fallback: ProcessorView
    held_enough: bool  # this payment has waited for the default as long as it may
    default_saturated: bool  # its queue would wait longer than it may for a free slot


def _usable(view: ProcessorView) -> bool:
    return not view.failing or view.probe_allowed


def choose_route(state: RoutingState) -> Route:
    default, fallback = state.default, state.fallback
    if not default.failing:
        if state.default_saturated and not fallback.failing:
            return Route.FALLBACK
        return Route.DEFAULT
    if default.probe_allowed:
        return Route.DEFAULT
    if state.held_enough and _usable(fallback):
        return Route.FALLBACK
    return Route.HOLD
