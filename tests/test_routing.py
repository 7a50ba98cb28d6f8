"""The routing policy, case by case (rinha/routing.py)."""

import pytest

from rinha.routing import ProcessorView, Route, RoutingState, choose_route

OK = ProcessorView(failing=False, probe_allowed=False)
DOWN = ProcessorView(failing=True, probe_allowed=False)
DOWN_PROBE = ProcessorView(failing=True, probe_allowed=True)

HELD = True  # the payment has waited for the default as long as it may
FRESH = False
SATURATED = True  # the default's queue would wait too long for a slot
FREE = False

# (default, fallback, held, default saturated) -> route
CASES = [
    (OK, OK, FRESH, FREE, Route.DEFAULT),
    (OK, OK, HELD, FREE, Route.DEFAULT),
    (OK, DOWN, HELD, FREE, Route.DEFAULT),
    (OK, DOWN_PROBE, FRESH, FREE, Route.DEFAULT),
    (OK, OK, FRESH, SATURATED, Route.FALLBACK),
    (OK, DOWN, FRESH, SATURATED, Route.DEFAULT),
    (OK, DOWN_PROBE, FRESH, SATURATED, Route.DEFAULT),
    (DOWN, OK, FRESH, FREE, Route.HOLD),
    (DOWN, OK, HELD, FREE, Route.FALLBACK),
    (DOWN_PROBE, OK, FRESH, FREE, Route.DEFAULT),
    (DOWN_PROBE, OK, HELD, FREE, Route.DEFAULT),
    # A failing default's queue does not spill: its payments are held, not saturating it.
    (DOWN_PROBE, OK, FRESH, SATURATED, Route.DEFAULT),
    (DOWN, OK, FRESH, SATURATED, Route.HOLD),
    (DOWN, DOWN_PROBE, FRESH, FREE, Route.HOLD),
    (DOWN, DOWN_PROBE, HELD, FREE, Route.FALLBACK),
    (DOWN, DOWN, HELD, FREE, Route.HOLD),
    (DOWN_PROBE, DOWN, HELD, FREE, Route.DEFAULT),
]


@pytest.mark.parametrize(("default", "fallback", "held", "saturated", "expected"), CASES)
def test_choose_route(
    default: ProcessorView,
    fallback: ProcessorView,
    held: bool,
    saturated: bool,
    expected: Route,
) -> None:
    assert choose_route(RoutingState(default, fallback, held, saturated)) is expected
