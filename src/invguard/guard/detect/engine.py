"""Detection in the guard: the pipeline's ``observe`` stage.

For every admitted request: fingerprint and encode its rows, exchange them with the shared state
(one atomic step), apply the client's current mitigation (block: 403; throttle: a second, lower
rate limit; tighten: a stricter policy answered in the role's shape, so nothing tells the client),
run the role's detectors, and on a new detection: record the evidence, apply the role's action to
the client and to the keys linked to it for its duration, write a detection record and a
mitigation record to the audit log (the chain and checkpoints cover them), count them in the
metrics, and emit typed events to the sinks. Expired mitigations are noticed by :meth:`expire`
(every second, from the guard's lifespan) and recorded the same way.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from invguard.core.errors import ConfigError
from invguard.guard.detect.antithetic import antithetic_counts
from invguard.guard.detect.base import DETECTORS, Detector, Finding, Observation
from invguard.guard.detect.config import DetectionConfig, RoleDetection
from invguard.guard.detect.encoder import Encoder
from invguard.guard.detect.events import Action, DetectionEvent, EventBus, MitigationEvent
from invguard.guard.detect.fingerprint import Fingerprinter
from invguard.guard.detect.knn import neighbour_distances
from invguard.guard.detect.state import MemoryState, RedisState, RowIn
from invguard.guard.detect.volume import linked_clients
from invguard.guard.pipeline import Exchange as Request
from invguard.guard.pipeline import Verdict
from invguard.guard.ratelimit import Limits

log = logging.getLogger("invguard.guard.detect")

CALIBRATION_VERSION = 1


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # "config", "calibrated" or "default"


def load_calibration(path: str | None) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        doc = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ConfigError(f"detection.calibration: {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("version") != CALIBRATION_VERSION:
        raise ConfigError(f"detection.calibration: {path} is not an invguard calibration (version 1)")
    return doc


def resolve_thresholds(
    cfg: DetectionConfig, size: int, calibration: dict[str, Any] | None
) -> dict[str, Threshold]:
    """Every threshold with where it came from: the config wins, then calibration, then default."""
    d = cfg.detectors
    lo, hi = cfg.input_range
    cal = (calibration or {}).get("thresholds", {})
    defaults: dict[str, tuple[float | None, float]] = {
        "fingerprint.matches": (d.fingerprint.matches, max(2.0, d.fingerprint.recent // 4)),
        # mean k-NN distance below 5% of the value range per element (RMS): a tight cluster
        "knn.threshold": (d.knn.threshold, 0.05 * (hi - lo) * math.sqrt(size)),
        "prada.threshold": (d.prada.threshold, 0.9),  # the paper's delta for its image tasks
        # an NES iteration centres population/2 mirrored pairs; one pair can be chance
        "antithetic.pairs": (d.antithetic.pairs, 3.0),
        # idle until calibrated: it needs the PCA encoder calibration fits
        "subspace.threshold": (d.subspace.threshold, 0.0),
        "volume.rows_per_hour": (d.volume.rows_per_hour, 10_000.0),
        "volume.distinct_per_day": (d.volume.distinct_per_day, 20_000.0),
    }
    out = {"volume.ratio": Threshold(1.0, "default")}
    for name, (given, default) in defaults.items():
        if given is not None:
            out[name] = Threshold(float(given), "config")
        elif name in cal:
            out[name] = Threshold(float(cal[name]), "calibrated")
        else:
            out[name] = Threshold(float(default), "default")
    return out


class DetectionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.detections = Counter(
            "invguard_guard_detections",
            "M3: detections of attack-like query patterns, by detector and role.",
            ["detector", "role"],
            registry=registry,
        )
        self.actions = Counter(
            "invguard_guard_mitigations",
            "Mitigation changes (applied, expired, lifted), by action.",
            ["action", "change"],
            registry=registry,
        )
        self.flagged = Gauge(
            "invguard_guard_flagged_clients",
            "Clients with a detection whose mitigation (or flag) is still in force.",
            registry=registry,
            multiprocess_mode="livesum",  # several workers: each counts the mitigations it set
        )
        self.active = Gauge(
            "invguard_guard_mitigations_active",
            "Mitigations in force, by action.",
            ["action"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.mitigated = Counter(
            "invguard_guard_mitigated_requests",
            "Requests answered under a mitigation, by action.",
            ["action"],
            registry=registry,
        )


class Detection:
    """The observer the guard's pipeline calls; owns the detectors, their state and the mitigations."""

    def __init__(
        self,
        cfg: DetectionConfig,
        *,
        input_shape: tuple[int, ...],
        secret: bytes,
        roles: dict[str, Any],
        limiter: Any,
        registry: CollectorRegistry,
        audit: Callable[[dict[str, Any]], Awaitable[Any]] | None = None,
        events: EventBus | None = None,
        state: Any = None,
        clock: Callable[[], float] = time.time,
        model_name: str = "model",
    ) -> None:
        from invguard.policies import parse

        self.cfg = cfg
        self.size = int(np.prod(input_shape))
        self.secret = secret
        self.limiter = limiter
        self.audit = audit
        self.events = events if events is not None else EventBus()
        self.clock = clock
        self.model_name = model_name
        self.metrics = DetectionMetrics(registry)
        self.calibration = load_calibration(cfg.calibration)
        self.thresholds = resolve_thresholds(cfg, self.size, self.calibration)
        values = {k: t.value for k, t in self.thresholds.items()}
        fp = cfg.detectors.fingerprint
        self.fingerprinter = Fingerprinter(
            secret,
            self.size,
            input_range=cfg.input_range,
            window=fp.window,
            step=fp.step,
            quant_step=fp.quant_step,
            keep=fp.keep,
        )
        self.match = fp.match if fp.match is not None else max(1, self.fingerprinter.keep // 2)
        enc = (self.calibration or {}).get("encoder")
        self.encoder = Encoder.from_dict(enc) if enc else Encoder.random(secret, self.size, cfg.encoder_dim)
        self.history = max(
            cfg.detectors.knn.history, cfg.detectors.prada.history, cfg.detectors.antithetic.window
        )
        lo, hi = cfg.input_range
        self.mirror_floor = cfg.detectors.antithetic.floor * (hi - lo) * math.sqrt(self.size)
        self.detectors: dict[str, Detector] = {}
        for name in DETECTORS.names():
            dcfg = getattr(cfg.detectors, name)
            if dcfg.enabled:
                self.detectors[name] = DETECTORS.get(name)(dcfg, values)
        if state is not None:
            self.state = state
        elif cfg.backend == "redis":
            self.state = RedisState(
                cfg.redis_url,
                cfg.prefix,
                match=self.match,
                recent=fp.recent,
                history=self.history,
                postings=fp.postings,
                ttl=cfg.ttl_seconds,
            )
        else:
            self.state = MemoryState(
                match=self.match,
                recent=fp.recent,
                history=self.history,
                postings=fp.postings,
                ttl=cfg.ttl_seconds,
                max_clients=cfg.max_clients,
                max_hashes=cfg.max_index_hashes,
                clock=clock,
            )
        self.roles = roles
        self.role_cfg: dict[str, RoleDetection] = {r: cfg.for_role(r) for r in roles}
        self.tighten = {
            r: parse(rc.tighten_policy, f"detection.roles.{r}.tighten_policy")
            for r, rc in self.role_cfg.items()
        }
        self._known: dict[str, tuple[float, str]] = {}  # client -> (until, action) this process set

    # ------------------------------------------------------------------ start-up report
    def report(self) -> list[str]:
        """One line per threshold: its value and whether it is configured, calibrated or a default."""
        lines = []
        cal = self.cfg.calibration
        if cal is not None and not Path(cal).exists():
            lines.append(
                f"detection.calibration: {cal} not found: thresholds are defaults until "
                "`invguard guard calibrate` writes it"
            )
        lines.append(f"detection encoder: {self.encoder.kind} ({self.encoder.dim} dimensions)")
        lines.append(
            f"detection threshold fingerprint.match = {self.match} shared hashes of {self.fingerprinter.keep}"
        )
        for k, t in sorted(self.thresholds.items()):
            lines.append(f"detection threshold {k} = {t.value:g} ({t.source})")
        return lines

    # ------------------------------------------------------------------ the pipeline stage
    def digests(self, flat: np.ndarray) -> list[bytes]:
        return [hmac.digest(self.secret, row.tobytes(), "sha256")[:16] for row in flat]

    async def measure(self, client: str, role: str, flat: np.ndarray) -> tuple[Any, Observation | None]:
        """Fingerprint and encode the rows, exchange them with the state, and build what the
        detectors read (None when the client is blocked: its queries are not recorded)."""
        hashes = (
            self.fingerprinter.hashes(flat)
            if "fingerprint" in self.detectors
            else [np.zeros(0, np.uint64)] * len(flat)
        )
        rows = [RowIn(d, h) for d, h in zip(self.digests(flat), hashes, strict=True)]
        xc = await self.state.exchange(client, rows, len(flat))
        if xc.mitigation is not None and xc.mitigation.get("action") == "block":
            return xc, None
        feats = self.encoder(flat)
        resid = self.encoder.residual_fraction(flat)
        skip = np.array([r.repeat for r in xc.rows], dtype=bool)
        d = feats.shape[1]
        # the history stores each query's features and, in one more column, its residual fraction
        stored = xc.features if xc.features.size else np.zeros((0, d + 1), np.float32)
        hist = stored[:, :d]
        hist_resid = stored[:, d] if stored.shape[1] > d else np.full(len(stored), np.nan)
        knn, dmins = neighbour_distances(hist, feats, self.cfg.detectors.knn.k, skip)
        mirrored: list[int] = []
        a = self.cfg.detectors.antithetic
        q, n = xc.queries, len(flat)
        if "antithetic" in self.detectors and (n >= a.every or q // a.every != (q - n) // a.every):
            pending = 0 if n >= a.every else (q - n) % a.every  # rows since the last test
            mirrored = antithetic_counts(
                hist, feats, skip, window=a.window, tau=a.tau, floor=self.mirror_floor, pending=pending
            )
        residual = np.concatenate([resid[~skip][::-1], hist_resid]).tolist()
        await self.state.commit(client, np.hstack([feats, resid[:, None]])[~skip], dmins)
        return xc, Observation(client, role, len(flat), xc, feats, knn, dmins, mirrored, residual)

    async def observe(self, ex: Request) -> Verdict | None:
        assert ex.x is not None and ex.client is not None and ex.role is not None
        client, role = ex.client, ex.role.name
        rcfg = self.role_cfg[role]
        flat = np.ascontiguousarray(ex.x.reshape(len(ex.x), -1), dtype=np.float32)
        xc, obs = await self.measure(client, role, flat)
        verdict = await self._mitigated(client, role, rcfg, xc.mitigation)
        if obs is None:  # blocked: nothing recorded
            return verdict
        names = rcfg.detectors if rcfg.detectors is not None else tuple(self.detectors)
        findings = [
            f for n in names if n in self.detectors if (f := self.detectors[n].check(obs)) is not None
        ]
        if not findings:
            return verdict
        ex.findings = len(findings)
        for f in findings:
            self.metrics.detections.labels(f.detector, role).inc()
        if xc.mitigation is not None:  # already mitigated: counted, not re-reported
            return verdict
        weak = set(rcfg.corroborate)
        if weak and all(f.detector in weak for f in findings):
            ev = await self.state.evidence(client)
            before = {e.get("detector") for e in ev if e.get("flag")}
            if len(before | {f.detector for f in findings}) < 2:  # one detector alone: a flag
                await self._flag(ex, obs, [f for f in findings if f.detector not in before])
                return verdict
        return await self._detected(ex, obs, rcfg, findings, flat) or verdict

    async def _flag(self, ex: Request, obs: Observation, findings: list[Finding]) -> None:
        """Record a finding that waits for corroboration (once per detector and client)."""
        assert ex.client is not None and ex.role is not None
        for f in findings:
            ev = DetectionEvent(
                id=uuid.uuid4().hex,
                time=self.clock(),
                detector=f.detector,
                model=self.model_name,
                client=ex.client,
                role=ex.role.name,
                score=round(f.score, 6),
                threshold=round(f.threshold, 6),
                queries=obs.exchange.queries,
                evidence={**f.evidence, "awaiting": "a second detector"},
            )
            await self.state.add_evidence(ex.client, {**ev.to_dict(), "flag": True})
            await self._audit(
                {"event": "detection", "client": ev.client, "role": ev.role, "detection": ev.to_dict()}
            )
            self.events.emit(ev)

    async def _mitigated(
        self, client: str, role: str, rcfg: RoleDetection, mit: dict[str, Any] | None
    ) -> Verdict | None:
        if mit is None:
            return None
        action = mit.get("action")
        if action == "block":
            self.metrics.mitigated.labels("block").inc()
            return Verdict(status=403, code="forbidden", message="this client may not query this model")
        if action == "throttle":
            t = rcfg.throttle
            d = await self.limiter.acquire(f"{client}#throttled", Limits(t.burst, t.per_second), 0)
            if not d.allowed:
                self.metrics.mitigated.labels("throttle").inc()
                return Verdict(
                    status=429,
                    code="rate_limited",
                    message="rate limit exceeded",
                    headers=(("Retry-After", str(max(1, math.ceil(d.retry_after)))),),
                    decision="rate_limited",
                )
            return None
        if action == "tighten":
            self.metrics.mitigated.labels("tighten").inc()
            return Verdict(policy=self.tighten[role], decision="tighten")
        return None

    async def _detected(
        self,
        ex: Request,
        obs: Observation,
        rcfg: RoleDetection,
        findings: list[Finding],
        flat: np.ndarray,
    ) -> Verdict | None:
        assert ex.client is not None and ex.role is not None
        now = self.clock()
        action: Action = rcfg.action
        until = now + rcfg.duration_seconds
        linked = linked_clients(obs, self.thresholds["fingerprint.matches"].value)
        events = []
        for f in findings:
            evidence = dict(f.evidence)
            if self.cfg.store_inputs:
                evidence["inputs"] = flat.tolist()
            events.append(
                DetectionEvent(
                    id=uuid.uuid4().hex,
                    time=now,
                    detector=f.detector,
                    model=self.model_name,
                    client=ex.client,
                    role=ex.role.name,
                    score=round(f.score, 6),
                    threshold=round(f.threshold, 6),
                    queries=obs.exchange.queries,
                    linked=tuple(linked),
                    action=action,
                    until=until,
                    evidence=evidence,
                )
            )
        first = events[0]
        targets = [ex.client] + (linked if rcfg.link else [])
        for ev in events:
            await self.state.add_evidence(ex.client, ev.to_dict())
            await self._audit(
                {"event": "detection", "client": ev.client, "role": ev.role, "detection": ev.to_dict()}
            )
            self.events.emit(ev)
        for c in targets:
            rec = {"action": action, "until": until, "detection": first.id, "detector": first.detector}
            if c != ex.client:
                rec["linked_to"] = ex.client
                await self.state.add_evidence(c, {**first.to_dict(), "linked_to": ex.client})
            await self.state.set_mitigation(c, rec, until)
            await self.state.reset(c)
            self._known[c] = (until, action)
            mev = MitigationEvent(uuid.uuid4().hex, now, "applied", c, action, until, first.id)
            await self._audit({"event": "mitigation", "client": c, "mitigation": mev.to_dict()})
            self.metrics.actions.labels(action, "applied").inc()
            self.events.emit(mev)
        self._refresh_gauges()
        log.warning(
            "detection: client %s (%s) by %s; %s until %.0f%s",
            ex.client,
            ex.role.name,
            ", ".join(e.detector for e in events),
            action,
            until,
            f"; linked {linked}" if linked else "",
        )
        if action == "tighten":
            return Verdict(policy=self.tighten[ex.role.name], decision="tighten")
        if action == "block":
            return Verdict(status=403, code="forbidden", message="this client may not query this model")
        return None

    async def _audit(self, rec: dict[str, Any]) -> None:
        if self.audit is not None:
            await self.audit({"route": "detection", "decision": rec["event"], **rec})

    def _refresh_gauges(self) -> None:
        now = self.clock()
        live = {c: a for c, (u, a) in self._known.items() if u > now}
        self.metrics.flagged.set(len(live))
        for a in ("none", "tighten", "throttle", "block"):
            self.metrics.active.labels(a).set(sum(1 for v in live.values() if v == a))

    # ------------------------------------------------------------------ expiry and admin
    async def expire(self) -> list[str]:
        """Record the mitigations this process applied whose duration is over."""
        now = self.clock()
        done = [c for c, (u, _) in self._known.items() if u <= now]
        for c in done:
            until, action = self._known.pop(c)
            if await self.state.get_mitigation(c) is not None:
                continue  # renewed (another detection, another replica)
            mev = MitigationEvent(uuid.uuid4().hex, now, "expired", c, action, until)  # type: ignore[arg-type]
            await self._audit({"event": "mitigation", "client": c, "mitigation": mev.to_dict()})
            self.metrics.actions.labels(action, "expired").inc()
            self.events.emit(mev)
        if done:
            self._refresh_gauges()
        return done

    async def flagged(self) -> list[dict[str, Any]]:
        """Every flagged client: its mitigation in force (if any) and its recent evidence."""
        mits = await self.state.mitigations()
        names = sorted(set(await self.state.flagged()) | set(mits))
        return [
            {"client": c, "mitigation": mits.get(c), "evidence": await self.state.evidence(c)} for c in names
        ]

    async def lift(self, client: str, by: str) -> dict[str, Any] | None:
        m: dict[str, Any] | None = await self.state.lift(client)
        if m is None:
            return None
        await self.state.reset(client)  # an admin judged the client: its recent queries start afresh
        self._known.pop(client, None)
        mev = MitigationEvent(
            uuid.uuid4().hex,
            self.clock(),
            "lifted",
            client,
            m.get("action", "none"),
            m.get("until"),
            m.get("detection"),
            by,
        )
        await self._audit({"event": "mitigation", "client": client, "by": by, "mitigation": mev.to_dict()})
        self.metrics.actions.labels(mev.action, "lifted").inc()
        self.events.emit(mev)
        self._refresh_gauges()
        return m

    async def close(self) -> None:
        await self.state.close()
