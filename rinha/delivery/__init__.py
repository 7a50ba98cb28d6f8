"""Delivery inside one replica: accepted payments from the line to the processors.

`Dispatcher` (dispatcher.py) is what the rest of the service calls, over the backlog
(backlog.py: where each pending payment is), the scheduler (scheduler.py: when and where the
next one leaves) and the settle protocol (settle.py: one payment's delivery, with its
transition table).
"""

from rinha.delivery.dispatcher import Dispatcher
from rinha.delivery.settle import ProcessorCounts

__all__ = ["Dispatcher", "ProcessorCounts"]
