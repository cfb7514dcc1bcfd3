"""Stateful detection of query-based attacks (inversion, extraction, membership sweeps) in the guard.

:mod:`.events` defines the typed events every detection and mitigation emits and the sink
interface that receives them.
"""

from invguard.guard.detect.events import (
    CallbackSink,
    DetectionEvent,
    Event,
    EventBus,
    EventSink,
    MitigationEvent,
)

__all__ = ["CallbackSink", "DetectionEvent", "Event", "EventBus", "EventSink", "MitigationEvent"]
