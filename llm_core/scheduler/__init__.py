"""Pure-CPU scheduling: request state, KV slot / request-row free lists, the router."""

from llm_core.scheduler.admission import fits, peak_slots
from llm_core.scheduler.allocators import AllocatorError, RowAllocator, SlotAllocator
from llm_core.scheduler.request import Request, RequestStatus
from llm_core.scheduler.router import Batch, Router, ScheduledSeq

__all__ = [
    "AllocatorError",
    "Batch",
    "Request",
    "RequestStatus",
    "RowAllocator",
    "Router",
    "ScheduledSeq",
    "SlotAllocator",
    "fits",
    "peak_slots",
]
