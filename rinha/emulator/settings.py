"""One emulated processor's settings, read once from the command line (see `__main__`)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    fee: Decimal  # fraction of the amount charged per payment, e.g. 0.07
    host: str = "127.0.0.1"
    port: int | None = None  # TCP listener, if set
    unix: str | None = None  # Unix socket listener, if set
    token: str = "123"  # initial X-Rinha-Token of the /admin routes
    rate_limit_seconds: float = 5.0  # length of a service-health window
    max_in_flight: int = 800
    max_queued: int = 500
