"""The guard's on-call side, run beside the request path: incidents, SLOs, the webhook, the audit trail.

:class:`OnCall` owns the incident store, the SLO evaluator and the webhook dispatcher of a guard
config, and one background task that, every ``interval`` seconds:

1. appends an audit-log record for every incident transition not yet logged (also those made by
   ``invguard incidents ack`` in another process): ``route: "incident"``, ``decision`` the action
   (``incident_opened``, ``incident_acknowledged``, ...), with the incident id, the actor and the
   note;
2. evaluates the privacy SLOs from the guard's counters and opens (or groups into) an incident
   for each breach;
3. opens an incident for each failed audit gate newly recorded in ``incidents.history``;
4. posts the webhook's due events.

Detections reach it as the detection package's typed events (:meth:`OnCall.emit`: an
:class:`~invguard.guard.detect.events.EventSink`) or as :class:`~invguard.guard.incidents.Detection`
(:meth:`OnCall.report`); both only queue: nothing here ever runs on the request path, and every
store call runs in a thread. A detection event becomes an incident of its detector for the client
and the clients linked to it (grouped with an open incident of the same cluster); a mitigation
event is recorded on the client's active incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.incidents import Clock, Detection, IncidentCollector, IncidentStore
from invguard.guard.metrics import aggregate, multiprocess
from invguard.guard.slo import SLOEvaluator, counter_totals
from invguard.guard.webhook import Transport, WebhookDispatcher

log = logging.getLogger("invguard.guard.oncall")
_QUEUE_MAX = 10_000

AuditAppend = Callable[[dict[str, Any]], Awaitable[Any]]


class AuditHistoryCollector:
    """The latest audit run of every model in an audit history store, for the executive dashboard:
    ``invguard_audit_passed{model}``, ``invguard_audit_finished_timestamp_seconds{model}`` and
    ``invguard_audit_metric_value{model,attack,exposure,metric}`` (read at scrape time)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> list[Any]:
        return []

    def latest(self) -> list[dict[str, Any]]:
        """Per model: the latest run's verdict, time, summary and metrics (empty if no store yet)."""
        import sqlite3
        from pathlib import Path

        if not Path(self.path).is_file():
            return []
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            runs = con.execute(
                "SELECT r.id, r.model, r.finished_at, r.passed, r.summary FROM runs r WHERE r.id = "
                "(SELECT id FROM runs WHERE model = r.model ORDER BY finished_at DESC, id DESC LIMIT 1) "
                "ORDER BY r.model"
            ).fetchall()
            out = []
            for rid, model, fin, passed, summary in runs:
                metrics = con.execute(
                    "SELECT attack, exposure, metric, value FROM metrics "
                    "WHERE run_id = ? AND value IS NOT NULL",
                    (rid,),
                ).fetchall()
                out.append(
                    {
                        "model": model,
                        "finished_at": fin,
                        "passed": bool(passed),
                        "summary": summary,
                        "metrics": metrics,
                    }
                )
            return out
        except sqlite3.DatabaseError as e:
            log.warning("audit history %s unreadable: %s", self.path, e)
            return []
        finally:
            con.close()

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        passed = GaugeMetricFamily(
            "invguard_audit_passed", "1 if the model's latest audit passed every gate.", labels=["model"]
        )
        when = GaugeMetricFamily(
            "invguard_audit_finished_timestamp_seconds",
            "When the model's latest audit finished.",
            labels=["model"],
        )
        value = GaugeMetricFamily(
            "invguard_audit_metric_value",
            "A metric of the model's latest audit run.",
            labels=["model", "attack", "exposure", "metric"],
        )
        for run in self.latest():
            passed.add_metric([run["model"]], float(run["passed"]))
            when.add_metric([run["model"]], run["finished_at"])
            for attack, exposure, metric, v in run["metrics"]:
                value.add_metric([run["model"], attack, exposure, metric], v)
        yield from (passed, when, value)


class OnCall:
    def __init__(
        self,
        cfg: Any,
        registry: Any,
        *,
        model_version: str = "unversioned",
        clock: Clock = time.time,
        transport: Transport | None = None,
        interval: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.interval = interval
        self.model_name = cfg.model.name
        self.model_version = model_version
        from prometheus_client import Gauge

        # the info metric dashboards and rules join on to label every series with the model served
        Gauge(
            "invguard_guard_model_info",
            "The model this guard serves (always 1; join on job and instance for its labels).",
            ["model", "model_version"],
            registry=registry,
            multiprocess_mode="livemax",
        ).labels(self.model_name, model_version).set(1)
        inc = cfg.incidents
        # collectors reading shared stores at scrape time (served by every worker as they are)
        self.collectors: list[Any] = []
        self.store: IncidentStore | None = None
        self.webhook: WebhookDispatcher | None = None
        if inc is not None:
            self.store = IncidentStore(inc.store, clock=clock, group_window=inc.group_window_seconds)
            self.collectors.append(IncidentCollector(self.store))
            if inc.history:
                self.collectors.append(AuditHistoryCollector(inc.history))
            for c in self.collectors:
                registry.register(c)
            if inc.webhook is not None:
                from prometheus_client import Counter

                deliveries = Counter(
                    "invguard_webhook_deliveries",
                    "Webhook delivery attempts by outcome (delivered, retry, gave_up).",
                    ["outcome"],
                    registry=registry,
                )
                try:
                    self.webhook = WebhookDispatcher.from_config(
                        self.store,
                        inc.webhook,
                        clock=clock,
                        transport=transport,
                        on_result=lambda o: deliveries.labels(o).inc(),
                    )
                except ConfigError as e:  # the secret's field, with its file and line
                    locate = getattr(cfg, "locate", None)
                    raise ConfigError(locate(str(e)) if locate else str(e)) from None
        self.slo = (
            SLOEvaluator(
                cfg.slos,
                # several workers: the SLOs are read from every worker's counters summed
                lambda: counter_totals(aggregate() if multiprocess() else registry),
                clock=clock,
                registry=registry,
                incidents=self.store,
            )
            if cfg.slos
            else None
        )
        self.canary: Any = None  # invguard.guard.canary.Canary, set by the guard when configured
        self._queue: list[Detection] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._append: AuditAppend | None = None

    # ------------------------------------------------------------------ feeding
    def report(self, d: Detection | Any) -> None:
        """Queue a detection (or a detection-package event) for the next tick (never blocks; drops
        beyond 10,000 pending)."""
        if self.store is None:
            return
        if len(self._queue) < _QUEUE_MAX:
            self._queue.append(d)
        else:
            log.warning("on-call queue full: %r dropped", getattr(d, "title", getattr(d, "id", d)))

    emit = report  # the EventSink interface of invguard.guard.detect.events

    def _from_event(self, ev: Any) -> Detection:
        """A detection event as an incident's detection."""
        mitigations = (
            [{"action": ev.action, "until": ev.until, "detection": ev.id, "client": ev.client}]
            if ev.action != "none"
            else []
        )
        return Detection(
            source="detection",
            detector=ev.detector,
            title=f"{ev.detector} flagged client {ev.client} "
            f"(score {ev.score:.4g}, threshold {ev.threshold:.4g})",
            model=ev.model,
            model_version=self.model_version,
            severity="page" if ev.action in ("throttle", "block") else "ticket",
            clients=(ev.client, *ev.linked),
            keys=(ev.client, *ev.linked),
            evidence={
                "detections": [ev.id],
                "scores": [ev.score],
                "threshold": ev.threshold,
                "queries": ev.queries,
                "role": ev.role,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in ev.evidence.items()},
            },
            mitigations=mitigations,
            first_seen=ev.time,
            last_seen=ev.time,
        )

    def _apply(self, store: IncidentStore, item: Any) -> None:
        if isinstance(item, Detection):
            if item.model_version == "unversioned":
                item.model_version = self.model_version
            store.open(item)
        elif getattr(item, "type", None) == "invguard.detection":
            store.open(self._from_event(item))
        elif getattr(item, "type", None) == "invguard.mitigation":
            active = store.find(state="active", client=item.client, limit=1)
            if active:
                m = {"change": item.change, "action": item.action, "until": item.until, "client": item.client}
                store.add_mitigation(active[0].id, m | {"detection": item.detection}, item.by or "guard")

    # ------------------------------------------------------------------ the loop
    async def start(self, append: AuditAppend, *, background: bool = True) -> None:
        """Begin the background loop (``background=False``: the caller calls :meth:`tick`)."""
        self._append = append
        if background and (self.store is not None or self.slo is not None):
            self._stop.clear()
            self._task = asyncio.create_task(self._run())

    async def tick(self) -> None:
        """One round of the background work (tests call it directly with an injected clock)."""
        store = self.store
        if store is not None:
            pending, self._queue = self._queue, []
            for item in pending:
                await asyncio.to_thread(self._apply, store, item)
        if self.slo is not None:
            for b in await asyncio.to_thread(self.slo.tick):
                if store is not None:
                    d = Detection(
                        source="slo",
                        detector=f"slo:{b.slo}",
                        title=b.describe(),
                        model=self.model_name,
                        model_version=self.model_version,
                        severity=b.severity,
                        group=f"slo:{b.slo}",
                        evidence={
                            "burn_long": b.burn_long,
                            "burn_short": b.burn_short,
                            "threshold": b.threshold,
                            "long_window_s": b.long_window,
                            "short_window_s": b.short_window,
                            "budget_remaining": b.budget_remaining,
                        },
                    )
                    await asyncio.to_thread(store.open, d)
        if store is not None and self.canary is not None:
            try:  # the canary comparison and its rollback (an incident, an audit record)
                await self.canary.tick(store, self._append)
            except Exception as e:
                log.warning("canary check failed: %s: %s", type(e).__name__, e)
        if store is not None and self.cfg.incidents.history:
            try:
                await asyncio.to_thread(
                    store.open_from_history, self.cfg.incidents.history, model_version=self.model_version
                )
            except Exception as e:  # the history store is missing or busy: next tick
                log.debug("history sync: %s", e)
        if store is not None and self._append is not None:
            await self._audit(store, self._append)
        if self.webhook is not None:
            await self.webhook.run_once()

    async def _audit(self, store: IncidentStore, append: AuditAppend) -> None:
        claimed = await asyncio.to_thread(store.claim_audit)
        for i, t in enumerate(claimed):
            rec = {
                "client": None,
                "role": None,
                "route": "incident",
                "status": None,
                "decision": f"incident_{t.action}",
                "policy": None,
                "input_hmac": None,
                "rows": 0,
                "labels": None,
                "entropy": None,
                "incident": t.incident_id,
                "actor": t.actor,
                "note": t.note,
                "at": t.at,
            }
            try:
                await append(rec)
            except Exception as e:  # the log cannot be written now: give the rest back for later
                log.warning("incident transition not yet in the audit log (%s); will retry", e)
                await asyncio.to_thread(store.unmark_audited, [x.id for x in claimed[i:]])
                return

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception as e:  # never let the on-call loop die
                log.warning("on-call tick failed: %s: %s", type(e).__name__, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
            with contextlib.suppress(Exception):
                await self.tick()  # the last transitions into the log before it closes
        if self.webhook is not None:
            await self.webhook.close()
