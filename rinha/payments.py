"""A payment as the service holds it, and the validation of `POST /payments` bodies.

Money is an `int` of cents from parse to render (SPEC.md §2: amount is a positive decimal).
"""

from __future__ import annotations

import enum
import math
import re

import orjson

from rinha.clock import now_ms

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Far above any real payment, and small enough that cents stay exact in a float.
MAX_CENTS = 10**13


class BadInput(Exception):
    """Input the service refuses; `status` is the HTTP answer and `reason` its short text."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Ownership(enum.Enum):
    """Whose payment this is to deliver. Only a shared store makes it anything but OURS
    (rinha/cluster/store/claims.py): two replicas may receive the same correlationId."""

    OURS = "ours"
    CLAIMING = "claiming"  # this replica's claim on the id is on its way to the store
    THEIRS = "theirs"  # another replica claimed the id first and delivers it


class Payment:
    """One accepted payment.

    `requested_at_ms` is set when an attempt is sent and kept while that attempt is unsettled:
    settling re-sends the identical body (SPEC.md §3, a 422 then proves the first went through).
    `sent_stamps` holds the requestedAt of every attempt sent: a processor that has the id with
    another one has another replica's acceptance of it.
    `accepted_ms` (wall clock) places it before or after a purge on any host.
    """

    __slots__ = (
        "_body_head",
        "accepted_at",
        "accepted_ms",
        "cents",
        "correlation_id",
        "ownership",
        "requested_at_ms",
        "sent_stamps",
        "unsettled_on",
        "unsettled_since",
    )

    def __init__(self, correlation_id: str, cents: int, accepted_ms: int) -> None:
        self.correlation_id = correlation_id
        self.cents = cents
        self.accepted_ms = accepted_ms
        self._body_head = b'{"correlationId":"%s","amount":%s,"requestedAt":"' % (
            correlation_id.encode(),
            format_cents(cents),
        )
        self.requested_at_ms: int | None = None
        self.sent_stamps: tuple[int, ...] = ()
        self.unsettled_on: str | None = None
        self.unsettled_since = 0.0
        self.accepted_at = 0.0  # loop time, set when queued
        self.ownership = Ownership.OURS

    def body(self, requested_at: str) -> bytes:
        """The processor's request body for an attempt stamped `requested_at`."""
        return self._body_head + requested_at.encode() + b'"}'


def format_cents(cents: int) -> bytes:
    return b"%d.%02d" % divmod(cents, 100)


def parse_payment(body: bytes) -> Payment:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadInput(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise BadInput(400, "body is not a JSON object")
    correlation_id = data.get("correlationId")
    if not isinstance(correlation_id, str) or not _UUID.fullmatch(correlation_id):
        raise BadInput(422, "correlationId must be a UUID")
    return Payment(correlation_id.lower(), parse_cents(data.get("amount")), now_ms())


def parse_cents(amount: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise BadInput(422, "amount must be a number")
    if not math.isfinite(amount) or amount <= 0:
        raise BadInput(422, "amount must be positive")
    if amount > MAX_CENTS / 100:
        raise BadInput(422, "amount is too large")
    cents = round(amount * 100)
    # cents/100 is the double nearest the decimal with two places, as parsing it would give.
    if cents / 100 != amount:
        raise BadInput(422, "amount must have at most two decimals")
    return cents
