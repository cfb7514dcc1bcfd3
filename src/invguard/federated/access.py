"""M5, gradient access events: every read of one client's raw (unmasked, unaggregated) update.

A server that averages plaintext updates reads each client's raw update every round, and so can
anyone with access to the aggregator's memory: that is the exposure gradient inversion exploits.
Under secure aggregation the server only ever holds masked vectors and their sum, so a deployment
that promises secure aggregation should show zero raw accesses. :class:`RawAccessLog` records each
access (who read it, the round, the client, whether secure aggregation was on) and exports the
count as the Prometheus counter ``invguard_gradient_raw_accesses_total{who, secure_aggregation}``
(client ids go to the event log, never into metric labels). The metrics registry is injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger("invguard.federated.access")


@dataclass(frozen=True)
class AccessEvent:
    """One read of one client's raw update."""

    who: str
    round: int
    client: int | str
    secure_aggregation: bool
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "who": self.who,
            "round": self.round,
            "client": self.client,
            "secure_aggregation": self.secure_aggregation,
            "at": self.at,
        }


class RawAccessLog:
    """Counts and logs accesses to individual clients' raw updates.

    ``registry``: a ``prometheus_client.CollectorRegistry`` to export the counter to (a private one
    when None, so tests never share state); ``clock``: the time source of the events.
    """

    def __init__(self, registry: Any = None, *, clock: Callable[[], float] = time.time) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = registry if registry is not None else CollectorRegistry()
        self._counter = Counter(
            "invguard_gradient_raw_accesses",
            "Reads of an individual federated client's raw (unmasked, unaggregated) model update (M5)",
            ["who", "secure_aggregation"],
            registry=self.registry,
        )
        self._clock = clock
        self._events: list[AccessEvent] = []
        self._lock = threading.Lock()

    def record(self, who: str, round: int, client: int | str, *, secure_aggregation: bool) -> AccessEvent:
        ev = AccessEvent(str(who), int(round), client, bool(secure_aggregation), float(self._clock()))
        with self._lock:
            self._events.append(ev)
        self._counter.labels(who=ev.who, secure_aggregation=str(ev.secure_aggregation).lower()).inc()
        _log.info(
            "raw update access: who=%s round=%d client=%s secure_aggregation=%s",
            ev.who,
            ev.round,
            ev.client,
            ev.secure_aggregation,
        )
        return ev

    @property
    def events(self) -> tuple[AccessEvent, ...]:
        with self._lock:
            return tuple(self._events)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._events)

    def by_who(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events:
            out[e.who] = out.get(e.who, 0) + 1
        return out
