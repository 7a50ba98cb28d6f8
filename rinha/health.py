"""What is known about one processor's health: the latest evidence wins.

Evidence comes from the rate-limited health endpoint (through whoever polls it) and from real
answers: a refusal says "failing" now, a confirmation says "working" now. Each piece carries
the loop time it was seen at; an older report never overrides a newer answer.
"""

from __future__ import annotations

from rinha.routing import ProcessorView

# A failing processor is probed with a real payment at most this often.
PROBE_GAP = 1.0


class ProcessorHealth:
    __slots__ = (
        "_evidence_at",
        "_last_rejected",
        "_probe_at",
        "failing",
        "min_response_ms",
        "probing",
    )

    def __init__(self) -> None:
        self.failing = False
        self.min_response_ms = 0
        self._evidence_at = float("-inf")
        self.probing = False
        self._probe_at = float("-inf")
        # The payment this processor rejected last, unless it confirmed one since.
        self._last_rejected: str | None = None

    def report(self, failing: bool, min_response_ms: int, at: float) -> bool:
        """Apply a health report seen at `at`; True when it changed `failing`."""
        self.min_response_ms = min_response_ms
        return self._observe(failing, at)

    def refused(self, at: float) -> bool:
        return self._observe(True, at)

    def confirmed(self, at: float) -> bool:
        self._last_rejected = None
        return self._observe(False, at)

    def rejects_everything(self, correlation_id: str) -> bool:
        """Note that this payment was rejected; True when another one was rejected last, with
        no confirmation between: the processor, not a payment, is at fault."""
        previous, self._last_rejected = self._last_rejected, correlation_id
        return previous is not None and previous != correlation_id

    def _observe(self, failing: bool, at: float) -> bool:
        if at < self._evidence_at:
            return False
        self._evidence_at = at
        changed = failing != self.failing
        self.failing = failing
        return changed

    def start_probe(self, at: float) -> None:
        self.probing = True
        self._probe_at = at

    def end_probe(self) -> None:
        self.probing = False

    def next_probe_at(self) -> float:
        return self._probe_at + PROBE_GAP

    def view(self, now: float) -> ProcessorView:
        probe_allowed = self.failing and not self.probing and now >= self.next_probe_at()
        return ProcessorView(self.failing, probe_allowed)
