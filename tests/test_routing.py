"""The routing policy, case by case (rinha/routing.py)."""

import pytest

from rinha.routing import ProcessorView, Route, RoutingState, choose_route

OK = ProcessorView(failing=False, probe_allowed=False)
DOWN = ProcessorView(failing=True, probe_allowed=False)
DOWN_PROBE = ProcessorView(failing=True, probe_allowed=True)

# (default, fallback) -> route
CASES = [
    (OK, OK, Route.DEFAULT),
    (OK, DOWN, Route.DEFAULT),
    (OK, DOWN_PROBE, Route.DEFAULT),
    (DOWN, OK, Route.FALLBACK),
    (DOWN_PROBE, OK, Route.DEFAULT),
    (DOWN, DOWN_PROBE, Route.FALLBACK),
    (DOWN, DOWN, Route.HOLD),
    (DOWN_PROBE, DOWN, Route.DEFAULT),
]


@pytest.mark.parametrize(("default", "fallback", "expected"), CASES)
def test_choose_route(default: ProcessorView, fallback: ProcessorView, expected: Route) -> None:
    assert choose_route(RoutingState(default, fallback)) is expected
