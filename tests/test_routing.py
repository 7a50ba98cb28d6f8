"""The routing policy, case by case (rinha/routing.py)."""

import pytest

from rinha.routing import ProcessorView, Route, RoutingState, choose_route

OK = ProcessorView(failing=False, probe_allowed=False)
DOWN = ProcessorView(failing=True, probe_allowed=False)
DOWN_PROBE = ProcessorView(failing=True, probe_allowed=True)

# (default, fallback, held long enough for the default) -> route
CASES = [
    (OK, OK, False, Route.DEFAULT),
    (OK, OK, True, Route.DEFAULT),
    (OK, DOWN, True, Route.DEFAULT),
    (OK, DOWN_PROBE, False, Route.DEFAULT),
    (DOWN, OK, False, Route.HOLD),
    (DOWN, OK, True, Route.FALLBACK),
    (DOWN_PROBE, OK, False, Route.DEFAULT),
    (DOWN_PROBE, OK, True, Route.DEFAULT),
    (DOWN, DOWN_PROBE, False, Route.HOLD),
    (DOWN, DOWN_PROBE, True, Route.FALLBACK),
    (DOWN, DOWN, True, Route.HOLD),
    (DOWN_PROBE, DOWN, True, Route.DEFAULT),
]


@pytest.mark.parametrize(("default", "fallback", "held_enough", "expected"), CASES)
def test_choose_route(
    default: ProcessorView, fallback: ProcessorView, held_enough: bool, expected: Route
) -> None:
    assert choose_route(RoutingState(default, fallback, held_enough)) is expected
