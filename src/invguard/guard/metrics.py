"""The guard's Prometheus metrics, on an injected ``CollectorRegistry`` (no global state).

Labels are bounded: route templates, status codes, configured role names (or ``anonymous``),
decisions and field names. Never a client id.

Privacy SLIs:

- **M2** ``invguard_guard_high_confidence_responses_total``: response rows whose returned scores
  have entropy below the configured threshold (a confident answer is what inversion feeds on), over
  ``invguard_guard_response_entropy_nats_count``. Rows answered under a detection mitigation (a
  tightened client's one-hot answers) are the guard defending itself, not the policy leaking: they
  are counted apart (``invguard_guard_mitigated_scored_rows_total``,
  ``invguard_guard_mitigated_high_confidence_responses_total``) and in neither M2 term.
- **M4** ``invguard_guard_sensitive_fields_total``: fields returned that expose more than a label
  (``scores``, ``logits``), by route and role: the response-field audit.
- **M6** ``invguard_guard_limit_violations_total``: requests refused by the rate limit or a budget.
- **M7** ``invguard_guard_audit_records_written_total`` vs ``invguard_guard_requests_total`` and
  ``invguard_guard_audit_write_failures_total``: log fidelity.

**Several workers** (``invguard serve --workers N``): prometheus-client's multiprocess mode. The
supervisor gives every worker ``PROMETHEUS_MULTIPROC_DIR`` (``metrics.multiprocess_dir``, by
default ``<audit log>.metrics/`` beside the log: a directory the operator controls, emptied at
each start), each worker's values live in memory-mapped files there, and ``/metrics`` on any
worker serves the sum over all of them (:func:`aggregate`): counters and histograms add up, the
gauges say how they combine (``multiprocess_mode``), and the supervisor calls
``mark_process_dead`` when a worker exits. Metrics never fail a request: a worker's values are
:func:`resilient` (a directory that vanished is recreated; a value that cannot be written is
logged and kept in memory), and the request is still answered and audited.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def multiprocess() -> bool:
    """True in a worker of ``invguard serve --workers N`` (metrics are shared through files)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


log = logging.getLogger("invguard.guard.metrics")


def _ensure_dir() -> None:
    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if d and not os.path.isdir(d):
        log.error("metrics: the multiprocess directory %s vanished: recreating it", d)
        os.makedirs(d, mode=0o700, exist_ok=True)


def resilient(base: Any) -> Any:
    """prometheus-client's value class ``base`` (``values.ValueClass``) made unable to fail a
    request: creating a value whose file cannot be opened recreates the multiprocess directory and
    tries again, then falls back to a value in memory (logged); a failed write is logged."""
    from prometheus_client.values import MutexValue

    class ResilientValue:
        _multiprocess = getattr(base, "_multiprocess", False)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            try:
                self._v = base(*args, **kwargs)
                return
            except OSError:
                pass
            try:
                _ensure_dir()
                self._v = base(*args, **kwargs)
            except (OSError, ValueError) as e:
                log.error("metrics: cannot open the file of %s (%s): kept in memory only", args[2], e)
                self._v = MutexValue(*args, **kwargs)  # type: ignore[no-untyped-call]

        def _call(self, what: str, *args: Any) -> Any:
            try:
                return getattr(self._v, what)(*args)
            except Exception as e:  # never fail the request because of a metric
                log.error("metrics: %s failed (%s: %s)", what, type(e).__name__, e)
                return None

        def inc(self, amount: float) -> None:
            self._call("inc", amount)

        def set(self, value: float, timestamp: float | None = None) -> None:
            self._call("set", value, timestamp)

        def set_exemplar(self, exemplar: Any) -> None:
            self._call("set_exemplar", exemplar)

        def get(self) -> Any:
            v = self._call("get")
            return 0.0 if v is None else v

        def get_exemplar(self) -> Any:
            return self._call("get_exemplar")

    return ResilientValue


def install_resilient_values() -> None:
    """Wrap the value class prometheus-client chose at import (a worker's: memory-mapped files)."""
    from prometheus_client import values

    if not getattr(values.ValueClass, "_invguard_resilient", False):
        values.ValueClass = resilient(values.ValueClass)
        values.ValueClass._invguard_resilient = True


def aggregate(collectors: tuple[Any, ...] = ()) -> CollectorRegistry:
    """A registry of every worker's metrics summed (MultiProcessCollector) and ``collectors``
    (those reading shared stores at scrape time, e.g. the incident store)."""
    from prometheus_client import multiprocess as mp

    reg = CollectorRegistry()
    try:
        _ensure_dir()
        mp.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as e:  # served without the workers' values rather than a 500
        log.error("metrics: the multiprocess directory cannot be read (%s)", e)
    for c in collectors:
        reg.register(c)
    return reg


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENTROPY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0)


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "invguard_guard_requests",
            "Requests handled, by route template, HTTP status and role.",
            ["route", "status", "role"],
            registry=registry,
        )
        self.latency = Histogram(
            "invguard_guard_request_seconds",
            "Time from request received to response ready (audit fsync included), by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.entropy = Histogram(
            "invguard_guard_response_entropy_nats",
            "Shannon entropy (nats) of each returned score vector, by role.",
            ["role"],
            buckets=ENTROPY_BUCKETS,
            registry=registry,
        )
        self.high_confidence = Counter(
            "invguard_guard_high_confidence_responses",
            "M2: response rows whose returned scores have entropy below the configured threshold.",
            ["role"],
            registry=registry,
        )
        self.mitigated_rows = Counter(
            "invguard_guard_mitigated_scored_rows",
            "Scored response rows answered under a detection mitigation (kept out of the entropy "
            "histogram and of M2: the guard defending itself, not the policy leaking).",
            ["role"],
            registry=registry,
        )
        self.mitigated_high_confidence = Counter(
            "invguard_guard_mitigated_high_confidence_responses",
            "Response rows under a detection mitigation (e.g. one-hot answers) with entropy below "
            "the M2 threshold; not counted in M2.",
            ["role"],
            registry=registry,
        )
        self.sensitive_fields = Counter(
            "invguard_guard_sensitive_fields",
            "M4: response fields exposing more than a label (scores, logits), by route and role.",
            ["route", "role", "field"],
            registry=registry,
        )
        self.text_secrets_masked = Counter(
            "invguard_guard_text_secrets_masked",
            "M4 for text: secret-pattern matches masked in generated text, by role and pattern.",
            ["role", "pattern"],
            registry=registry,
        )
        self.violations = Counter(
            "invguard_guard_limit_violations",
            "M6: requests refused by the rate limit (rate_limited) or a query budget (budget_exhausted).",
            ["role", "kind"],
            registry=registry,
        )
        self.audit_written = Counter(
            "invguard_guard_audit_records_written",
            "M7: audit records fsynced to the log.",
            registry=registry,
        )
        self.audit_failures = Counter(
            "invguard_guard_audit_write_failures",
            "M7: audit records that could not be written (their requests got no prediction).",
            registry=registry,
        )
        self.audit_tail_rejected = Counter(
            "invguard_guard_audit_tail_rejected_lines",
            "M7: unsigned log lines that failed the keyed chain at start-up and were quarantined.",
            registry=registry,
        )
        self.audit_witness_failures = Counter(
            "invguard_guard_audit_witness_failures",
            "M7: signed heads a witness refused or could not take (retried with the next head).",
            registry=registry,
        )
        self.audit_witness_inconsistent = Counter(
            "invguard_guard_audit_witness_inconsistent",
            "M7: witnesses found holding a head of another history than the log (never overwritten).",
            registry=registry,
        )
        self.connections_refused = Counter(
            "invguard_guard_connections_refused",
            "Connections closed at the transport: request headers too slow (header_timeout) or too many "
            "connections from one address (too_many_connections).",
            ["reason"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "invguard_guard_upstream_errors",
            "Upstream model server failures (unreachable, timeout, error status, malformed answer).",
            ["kind"],
            registry=registry,
        )
        self.limiter_errors = Counter(
            "invguard_guard_limiter_errors",
            "Requests refused (503) because the rate-limit backend could not be reached.",
            registry=registry,
        )
        self.rows = Counter(
            "invguard_guard_rows_served",
            "Input rows answered with a prediction, by role.",
            ["role"],
            registry=registry,
        )
        self.ready = Gauge(
            "invguard_guard_ready",
            "1 when the guard is ready to serve (several workers: when one of them is).",
            registry=registry,
            multiprocess_mode="livemax",
        )
