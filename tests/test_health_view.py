"""What the dispatcher believes about a processor: the latest evidence wins (rinha/health.py)."""

from rinha.health import ProcessorHealth


def test_newer_answer_overrides_older_report() -> None:
    health = ProcessorHealth()
    health.report(failing=False, min_response_ms=0, at=10.0)
    assert health.refused(at=11.0) is True
    assert health.failing
    # A report taken before the refusal does not clear it.
    assert health.report(failing=False, min_response_ms=0, at=10.5) is False
    assert health.failing
    assert health.confirmed(at=12.0) is True
    assert not health.failing


def test_one_probe_at_a_time_and_spaced() -> None:
    health = ProcessorHealth()
    health.refused(at=0.0)
    assert health.view(now=0.0).probe_allowed
    health.start_probe(at=0.0)
    assert not health.view(now=5.0).probe_allowed  # one in flight already
    health.end_probe()
    assert not health.view(now=0.5).probe_allowed  # too soon after the last one
    assert health.view(now=1.0).probe_allowed


def test_working_processor_needs_no_probe() -> None:
    health = ProcessorHealth()
    view = health.view(now=100.0)
    assert not view.failing and not view.probe_allowed
