"""Typed events the guard's detection emits, and the sink interface that receives them.

Detection does not know how incidents are handled: every detection and every mitigation change is
one frozen event handed to the sinks registered on an :class:`EventBus` (in-process callbacks;
incidents, webhooks and pages are built on top of them). A sink must return quickly (queue the
work if it is slow); one that raises is logged and counted, and never stops the request or the
other sinks. Events carry no raw inputs: only client ids, detector statistics and salted
fingerprint digests.

``to_dict()`` gives a JSON-safe mapping with a ``type`` field (``invguard.detection`` or
``invguard.mitigation``), the shape the admin API and the audit log use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, cast

log = logging.getLogger("invguard.guard.detect")

Action = Literal["none", "tighten", "throttle", "block"]
ACTIONS: tuple[str, ...] = ("none", "tighten", "throttle", "block")


@dataclass(frozen=True)
class DetectionEvent:
    """A detector found a client's queries look like an attack.

    ``score`` is the detector's statistic and ``threshold`` the value it crossed (for ``prada`` a
    p-value below its threshold); ``linked`` the other clients whose queries matched this one's
    (an attack spread over several keys); ``evidence`` detector-specific, JSON-safe details.
    ``action`` is what the guard did about it and ``until`` when that action expires (unix seconds).
    """

    id: str
    time: float
    detector: str
    model: str
    client: str
    role: str
    score: float
    threshold: float
    queries: int
    linked: tuple[str, ...] = ()
    action: Action = "none"
    until: float | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    type = "invguard.detection"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["linked"] = list(self.linked)
        d["evidence"] = dict(self.evidence)
        return {"type": self.type, **d}


@dataclass(frozen=True)
class MitigationEvent:
    """A mitigation started (``applied``), ended by its duration (``expired``) or by an admin
    (``lifted``). ``detection`` is the id of the detection that caused it (None when lifted by
    hand without one); ``by`` the admin client that lifted it."""

    id: str
    time: float
    change: Literal["applied", "expired", "lifted"]
    client: str
    action: Action
    until: float | None
    detection: str | None = None
    by: str | None = None

    type = "invguard.mitigation"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


Event = DetectionEvent | MitigationEvent


class EventSink(Protocol):
    """Anything that accepts events: ``emit`` must not block."""

    def emit(self, event: Event) -> None: ...


class CallbackSink:
    """A sink calling a plain function for every event."""

    def __init__(self, fn: Callable[[Event], None]) -> None:
        self.fn = fn

    def emit(self, event: Event) -> None:
        self.fn(event)


class EventBus:
    """Fans events out to sinks; a failing sink is logged and counted (``failures``)."""

    def __init__(self, sinks: list[EventSink] | None = None) -> None:
        self.sinks: list[EventSink] = list(sinks or [])
        self.failures = 0

    def subscribe(self, sink: EventSink | Callable[[Event], None]) -> EventSink:
        s = cast(EventSink, sink) if hasattr(sink, "emit") else CallbackSink(sink)
        self.sinks.append(s)
        return s

    def unsubscribe(self, sink: EventSink) -> None:
        self.sinks.remove(sink)

    def emit(self, event: Event) -> None:
        for s in list(self.sinks):
            try:
                s.emit(event)
            except Exception:
                self.failures += 1
                log.exception("event sink %r failed on %s %s", s, event.type, event.id)
