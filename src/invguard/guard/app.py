"""The guard: an ASGI app in front of a model (the thin layer: components, routes, the audit write).

Every prediction request goes through the staged :class:`~invguard.guard.pipeline.Pipeline`: read
the body (bounded by ``server.max_body_bytes``), authenticate the API key, check the model name and
the inputs, take a rate-limit cell and charge the query budget (atomically), let detection observe
it, predict, apply the role's output policy; the app then writes the audit record (fsynced, group
commit) and only then answers. Every outcome, including 401 / 403 / 404 / 405 / 400 / 413 / 415 /
429 / 500 / 502 / 503, writes an audit record; no error body ever carries scores or logits (nor
upstream details), and a success carries only what the role's policy allows.

Requests without a valid key (and requests to unknown routes or with the wrong method) go through
the :class:`~invguard.guard.gate.KeylessGate` (limited per peer address, bodies never stored,
refusals recorded at most once a second per address). Prediction routes are served by a direct
ASGI path; service routes, unknown routes and wrong methods by Starlette.

As worker ``i`` of ``invguard serve --workers N`` (:mod:`invguard.guard.workers`) the guard writes
its own chain of the audit log (:mod:`invguard.guard.auditlog.workers`), stamps ``worker`` on every
record, opens with a ``worker_start`` record naming the signed manifest, and serves on ``/metrics``
the metrics of every worker summed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from invguard.core.errors import ConfigError
from invguard.guard import openapi
from invguard.guard.admin import AdminPage
from invguard.guard.auditlog import AuditLog, AuditLogError, witness_from_spec
from invguard.guard.auditlog.signing import public_hex, read_secret
from invguard.guard.auditlog.workers import (
    read_manifest,
    single_chain_problem,
    worker_path,
    worker_start_record,
    worker_witness,
)
from invguard.guard.auth import Authenticator, KeyRecord, KeyStore
from invguard.guard.codec import ENCODER, V1, V2, BadInput, InputCodec, read_body
from invguard.guard.config import GuardConfig
from invguard.guard.connections import ConnectionGuard
from invguard.guard.gate import KeylessGate
from invguard.guard.keys import detect_salt_path, key_paths, open_keys
from invguard.guard.metrics import GuardMetrics, aggregate, multiprocess
from invguard.guard.oncall import OnCall
from invguard.guard.pipeline import INTERNAL, Observer, Outcome, Pipeline, Role, record_template
from invguard.guard.ratelimit import Limits, MemoryLimiter, RedisLimiter
from invguard.guard.text import TEXT_ROUTES, TextPipeline, text_openapi
from invguard.guard.upstream import build_model
from invguard.policies import Identity, OutputPolicy, parse

__all__ = ["Guard", "Role", "build_app", "key_paths"]

log = logging.getLogger("invguard.guard")


def _json(doc: Any, status: int = 200) -> Response:
    return Response(ENCODER.encode(doc).encode(), status_code=status, media_type="application/json")


class Guard:
    """Owns the components; ``app`` is the ASGI application."""

    def __init__(
        self,
        cfg: GuardConfig,
        *,
        registry: CollectorRegistry | None = None,
        model: Any = None,
        limiter: Any = None,
        observer: Observer | None = None,
        events: Any = None,
        detect_state: Any = None,
        clock: Any = None,
        worker: int | None = None,
        workers: int = 1,
        canary_model: Any = None,
    ) -> None:
        self.cfg = cfg
        self.worker, self.workers = worker, workers
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GuardMetrics(self.registry)
        self.text = cfg.model.is_text  # a language model: OpenAI-compatible routes (guard/text.py)
        if self.text:
            from invguard.guard.text import build_text_model

            self.model = model if model is not None else build_text_model(cfg.model)
        else:
            self.model = model if model is not None else build_model(cfg.model)
        self.input_shape: tuple[int, ...] = tuple(self.model.input_shape)
        self.num_classes = int(self.model.num_classes)
        self.model_name = cfg.model.name
        self.max_batch = cfg.model.max_batch
        self.lo, self.hi = cfg.model.input_range
        self.codec = InputCodec(self.input_shape or (1,), self.max_batch, self.lo, self.hi)
        # instance attributes (looked up per request), so a test can make decoding fail
        self._parse_v1 = self.codec.parse_v1
        self._parse_v2 = self.codec.parse_v2
        self.max_body = cfg.server.max_body_bytes
        self.roles: dict[str, Role] = {}
        self.text_policies: dict[str, Any] = {}
        for name, rc in cfg.roles.items():
            if self.text:
                from invguard.policies.text import text_policy

                self.text_policies[name] = text_policy(rc.policy, f"roles.{name}.policy")
                pol: OutputPolicy = Identity()
            else:
                # noise is drawn from OS entropy: a seed in the config would hand an attacker the
                # noise stream to subtract, so every step that declares itself random is rebuilt unseeded
                pol = parse(rc.policy, f"roles.{name}.policy").reseeded(None)
            self.roles[name] = Role(
                name,
                pol,
                self.text_policies[name].label() if self.text else pol.label(),
                Limits(rc.rate.burst, rc.rate.per_second, rc.budget.day, rc.budget.week, rc.budget.scope),
            )
        store = KeyStore(cfg.auth.key_store) if cfg.auth.key_store else None
        if store is not None:
            try:  # so that `invguard keys add` can refuse a role this guard does not have
                store.record_roles(self.roles)
            except (sqlite3.Error, OSError) as e:
                log.warning("could not record the guard's roles in %s: %s", cfg.auth.key_store, e)
        self.auth = Authenticator(
            [KeyRecord(k.id, k.sha256, k.role, owner=k.owner) for k in cfg.auth.keys],
            self.roles,
            header=cfg.auth.header,
            store=store,
        )
        if limiter is not None:
            self.limiter = limiter
        elif cfg.ratelimit.backend == "redis":
            self.limiter = RedisLimiter(cfg.ratelimit.redis_url, cfg.ratelimit.prefix)
        else:
            self.limiter = MemoryLimiter()
        keys = open_keys(cfg.audit.path, cfg.audit.signing_key, cfg.audit.hash_key, cfg.audit.chain_key)
        self.warnings: list[str] = list(keys.warnings)
        if isinstance(self.limiter, RedisLimiter):
            problem = self.limiter.persistence_problem()
            if problem is not None and cfg.ratelimit.require_persistence:
                raise ConfigError(f"ratelimit.require_persistence: {problem}")
            if problem is not None:
                msg = f"{problem}; set ratelimit.require_persistence: true to refuse to start"
                self.warnings.append(msg)
                log.warning(msg)
        self._hkey = keys.hmac_key
        audit_path, witnesses = cfg.audit.path, list(cfg.audit.witnesses)
        self._manifest: dict[str, Any] | None = None
        if (
            worker is None
            and (problem := single_chain_problem(cfg.audit.path, scan_records=False)) is not None
        ):
            raise ConfigError(
                f"audit.path: {problem}: serve it with invguard serve, which opens the chains and signs "
                "the manifest for any number of workers"
            )
        if worker is not None:  # its own chain, bound to the others by the manifest the supervisor signed
            self._manifest = read_manifest(cfg.audit.path, public_hex(keys.signing_key))
            audit_path = str(worker_path(cfg.audit.path, worker))
            witnesses = [worker_witness(w, worker) for w in witnesses]
        self.audit = AuditLog(
            audit_path,
            signing_key=keys.signing_key,
            chain_key=keys.chain_key,
            witnesses=[witness_from_spec(w) for w in witnesses],
            checkpoint_every=cfg.audit.checkpoint_every,
            checkpoint_seconds=cfg.audit.checkpoint_seconds,
            rotate_bytes=cfg.audit.rotate_bytes,
            fsync=cfg.audit.fsync,
            on_written=lambda n: self.metrics.audit_written.inc(n),
            on_failed=lambda n: self.metrics.audit_failures.inc(n),
            on_tail_rejected=lambda n: self.metrics.audit_tail_rejected.inc(n),
            on_witness_failed=lambda n: self.metrics.audit_witness_failures.inc(n),
            on_witness_inconsistent=lambda n: self.metrics.audit_witness_inconsistent.inc(n),
        )
        self.model_version = cfg.model.version
        # incidents, SLOs, webhook: off the request path
        self.oncall = OnCall(cfg, self.registry, model_version=self.model_version)
        self.canary = self._build_canary(canary_model, clock)
        self.oncall.canary = self.canary
        self.store_inputs = cfg.audit.store_inputs
        self.hc_threshold = cfg.metrics.high_confidence_entropy
        self.openapi = (
            text_openapi(self.model_name, cfg.auth.header)
            if self.text
            else openapi.build(
                model_name=self.model_name,
                input_shape=self.input_shape,
                num_classes=self.num_classes,
                max_batch=self.max_batch,
                input_range=(self.lo, self.hi),
                key_header=cfg.auth.header,
            )
        )
        ar = cfg.server.anonymous_rate
        shared = self.limiter if isinstance(self.limiter, RedisLimiter) else None
        self.gate = KeylessGate(Limits(ar.burst, ar.per_second), shared=shared)
        self._openapi_body = json.dumps(self.openapi).encode()
        self._m_requests: dict[tuple[str, int, str], Any] = {}
        self._m_latency: dict[str, Any] = {}
        self._m_children: dict[tuple[Any, ...], Any] = {}
        self.detection: Any = None
        self.startup_report: list[str] = []  # detection's thresholds, for the start-up output
        if observer is None and cfg.detection.enabled and not self.text:
            observer = self.detection = self._build_detection(events, detect_state, clock)
        text_kw: dict[str, Any] = (
            {"text_policies": self.text_policies, "max_tokens": cfg.model.max_tokens} if self.text else {}
        )
        self.pipeline = (TextPipeline if self.text else Pipeline)(
            **text_kw,
            model=self.model,
            model_name=self.model_name,
            roles=self.roles,
            auth=self.auth,
            limiter=self.limiter,
            metrics=self.metrics,
            child=self._child,
            decode=self._decode,
            hkey=self._hkey,
            max_body=self.max_body,
            store_inputs=self.store_inputs,
            high_confidence_entropy=self.hc_threshold,
            observer=observer,
            body_timeout=cfg.server.body_timeout,
            **({"canary": self.canary} if self.canary is not None else {}),
        )
        sc = cfg.server
        self.connections = ConnectionGuard(
            sc.header_timeout, sc.max_connections_per_address, self._connection_refused
        )
        self.http_protocol = self.connections.protocol()  # what uvicorn serves the guard with
        self._refusals: set[Any] = set()
        self.starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                Route("/openapi.json", self.openapi_endpoint, methods=["GET"]),
                Route("/admin/flagged", self.admin_flagged, methods=["GET"]),
                Route("/admin/flagged/{client}/lift", self.admin_lift, methods=["POST"]),
                *AdminPage(self).routes(),  # the admin page and the incident API
                # the prediction routes are answered by __call__; listed so a GET is a 405, not a 404
                Route(V1, _served_by_fast_path, methods=["POST"]),
                Route(V2, _served_by_fast_path, methods=["POST"]),
                *[
                    Route(r, _served_by_fast_path, methods=["POST"])
                    for r in (TEXT_ROUTES if self.text else ())
                ],
            ],
            exception_handlers={HTTPException: self.http_error, Exception: self.internal_error},
            lifespan=self.lifespan,
        )
        self.starlette.router.redirect_slashes = False  # a 307 to a Host-derived URL, unaudited
        self.app = self

    def _build_canary(self, model: Any, clock: Any) -> Any:
        """The canary (a second model version and its comparison), if ``canary:`` is configured."""
        cfg = self.cfg
        if cfg.canary is None:
            return None
        from invguard.guard.canary import Canary, CanaryStateStore
        from invguard.guard.config import canary_problem

        problem = canary_problem(cfg)
        if problem is not None:
            raise ConfigError(problem)
        assert cfg.incidents is not None
        if model is None:
            model = build_model(cfg.canary_model())
        shape, k = tuple(model.input_shape), int(model.num_classes)
        if shape != self.input_shape or k != self.num_classes:
            raise ConfigError(
                f"canary: the canary model takes inputs {list(shape)} with {k} classes; the stable model "
                f"takes {list(self.input_shape)} with {self.num_classes}: both versions must fit one API"
            )
        return Canary(
            cfg.canary,
            model_name=self.model_name,
            stable_version=self.model_version,
            stable_model=self.model,
            canary_model=model,
            key=self._hkey,
            store=CanaryStateStore(cfg.incidents.store, **({"clock": clock} if clock else {})),
            history=cfg.incidents.history,
            registry=self.registry,
            **({"clock": clock} if clock else {}),
        )

    def _build_detection(self, events: Any, state: Any, clock: Any) -> Any:
        from invguard.guard.detect.engine import Detection

        dc = self.cfg.detection
        secret = read_secret(detect_salt_path(self.cfg.audit.path, dc.salt_key), "detection.salt_key")
        det = Detection(
            dc,
            input_shape=self.input_shape,
            secret=secret,
            roles=self.roles,
            limiter=self.limiter,
            registry=self.registry,
            audit=self.append,
            events=events,
            state=state,
            model_name=self.model_name,
            **({"clock": clock} if clock is not None else {}),
        )
        # each threshold and where it came from: printed by `invguard serve` under "guard serving"
        self.startup_report = det.report()
        for line in self.startup_report:
            (log.warning if line.startswith("detection.calibration:") else log.info)(line)
        # detection and mitigation events become incidents (queued: handled off the request path)
        det.events.subscribe(self.oncall)
        return det

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        await self.audit.start()
        if self.worker is not None and self._manifest is not None:
            await self.append(worker_start_record(self.worker, self.workers, self._manifest))
        await self.model.start()
        if self.canary is not None:
            await self.canary.canary.model.start()
        await self.oncall.start(self.append)
        self.metrics.ready.set(1)
        self.loop = asyncio.get_running_loop()
        expiry = asyncio.create_task(self._expire_loop()) if self.detection is not None else None
        try:
            yield
        finally:
            self.metrics.ready.set(0)
            await self.oncall.close()
            if expiry is not None:
                expiry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await expiry
                await self.detection.close()
            await self.model.close()
            if self.canary is not None:
                await self.canary.canary.model.close()
            await self.limiter.close()
            await self.audit.close()

    async def _expire_loop(self) -> None:
        """Record expired mitigations about once a second (their effect ends on time regardless:
        the state stores each mitigation with its expiry)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.detection.expire()
            except Exception:
                log.exception("detection: recording expired mitigations failed")

    # ------------------------------------------------------------------ plumbing
    def _connection_refused(self, peer: str, reason: str) -> None:
        """A connection closed at the transport (headers too slow, too many from one address):
        metered always, recorded at most once a second per address (``suppressed`` counts the rest)."""
        self._child(self.metrics.connections_refused, reason).inc()
        rec = record_template(self._hkey, None)
        rec.update(decision="connection_refused", reason=reason, route="connection")
        rec["status"] = 408 if reason == "header_timeout" else 503
        if not self.gate.note_refusal(peer, rec):
            return
        task = asyncio.ensure_future(self.audit.append(rec))
        self._refusals.add(task)
        task.add_done_callback(self._refusal_written)

    def _refusal_written(self, task: Any) -> None:
        self._refusals.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a connection refusal could not be audited: %s", task.exception())

    def _decode(self, route: str, body: bytes) -> tuple[Any, str | None]:
        if route == V1:
            return self._parse_v1(body), None
        return self._parse_v2(body)

    async def _finish(
        self, route: str, t0: float, o: Outcome, peer: str = ""
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Write the outcome's audit record (a keyless one through the gate), meter it, encode it."""
        status, doc, record, headers = o.status, o.doc, o.record, o.headers
        audit = True
        if o.keyless:
            allowed, audit = await self.gate.check(peer, record)
            if not allowed:
                self._child(self.metrics.violations, "anonymous", "rate_limited").inc()
                record["decision"] = "rate_limited"
                doc = {
                    "code": "rate_limited",
                    "error": "too many requests without a valid API key from this address",
                }
                status, headers = 429, [("Retry-After", "1")]
        record["status"] = status
        record["route"] = route
        try:
            if audit:
                await self.append(record)
        except AuditLogError:
            status, doc = (
                503,
                {"code": "audit_unavailable", "error": "the audit log cannot be written; try later"},
            )
            headers = None
        role = record.get("role") or "anonymous"
        key = (route, status, role)
        counter = self._m_requests.get(key)
        if counter is None:
            counter = self._m_requests[key] = self.metrics.requests.labels(route, str(status), role)
        counter.inc()
        hist = self._m_latency.get(route)
        if hist is None:
            hist = self._m_latency[route] = self.metrics.latency.labels(route)
        hist.observe(time.perf_counter() - t0)
        body = ENCODER.encode(doc).encode()
        return status, body, headers or []

    async def append(self, record: dict[str, Any]) -> int:
        """Write an audit record stamped with the model and its version (every record the guard
        writes goes through here: requests, detections, incident transitions, admin actions)."""
        record["model"] = self.model_name
        # the version that answered (a canary's client's records carry the canary's, and so do the
        # detection records about that client)
        if self.canary is not None and record.get("route") == "detection" and record.get("client"):
            record.setdefault("model_version", self.canary.version_of(record["client"]))
        record["model_version"] = record.get("model_version") or self.model_version
        if self.worker is not None:
            record["worker"] = self.worker
        seq: int = await self.audit.append(record)
        return seq

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the label values are bounded (routes, roles, kinds),
        and the lookup in prometheus-client takes a lock and builds a tuple on every call."""
        key = (id(metric), *labels)
        child = self._m_children.get(key)
        if child is None:
            child = self._m_children[key] = metric.labels(*labels)
        return child

    async def _guarded(
        self,
        headers: list[tuple[bytes, bytes]],
        stream: AsyncIterator[bytes],
        name: str | None,
        route: str,
        peer: str = "",
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        t0 = time.perf_counter()
        outcome = await self.pipeline.run(headers, stream, name, route, peer)
        return await self._finish(route, t0, outcome, peer)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI entry point: prediction routes are served directly (the hot path), everything
        else (service routes, unknown routes, wrong methods, lifespan) by the Starlette app."""
        if scope["type"] == "http" and scope["method"] == "POST":
            m = None if self.text else _FAST.match(scope["path"])
            text_route = self.text and scope["path"] in TEXT_ROUTES
            if m is not None or text_route:
                if text_route:
                    route, name = scope["path"], None
                else:
                    assert m is not None
                    route = V1 if m.group(1) is not None else V2
                    name = m.group(1) if m.group(1) is not None else m.group(2)
                try:
                    status, body, headers = await self._guarded(
                        scope["headers"], _stream(receive), name, route, _peer(scope)
                    )
                except Exception:  # _guarded audits its own failures; this is if the audit itself raised
                    status, body, headers = 500, b'{"code":"internal_error","error":"internal error"}', []
                raw = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
        await self.starlette(scope, receive, send)

    # ------------------------------------------------------------------ errors and service routes
    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        t0 = time.perf_counter()
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        msg = {
            404: f"no route {request.url.path!r}; see /openapi.json",
            405: f"method {request.method} not allowed on {request.url.path!r}",
        }.get(status, str(getattr(exc, "detail", "bad request")))
        try:
            body: bytes | None = await read_body(
                request.headers.get("content-length"),
                request.stream(),
                self.max_body,
                self.cfg.server.body_timeout,
            )
        except BadInput:
            body = None
        rec = record_template(self._hkey, body)  # no key was checked: the body is never stored
        route = (
            "unmatched"
            if status == 404
            else request.url.path
            if request.url.path in ("/healthz", "/readyz", "/metrics", "/openapi.json")
            else _template(request.url.path)
        )
        status = status if 400 <= status < 500 else 400
        outcome = Outcome(status, {"code": code, "error": msg}, rec, keyless=True)
        return _response(await self._finish(route, t0, outcome, _peer(request.scope)))

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        # the last resort: never a traceback, never model outputs; still audited and metered
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        rec = record_template(self._hkey, None)
        rec["decision"] = "error"
        outcome = Outcome(500, dict(INTERNAL), rec)
        return _response(await self._finish(_template(request.url.path), time.perf_counter(), outcome))

    async def _admin(self, request: Request, route: str) -> tuple[Any, Outcome | None]:
        """The admin principal, or the outcome refusing the request (401 / 403 / 404)."""
        rec = record_template(self._hkey, None)
        if self.detection is None:
            return None, Outcome(404, {"code": "not_found", "error": "detection is not enabled"}, rec)
        problem = await self.auth.refresh()
        if problem is not None:
            return None, Outcome(503, {"code": "auth_unavailable", "error": problem}, rec)
        principal, reason = self.auth.authenticate(request.scope["headers"])
        if principal is None:
            rec["decision"] = "unauthorized"
            return None, Outcome(401, {"code": "unauthorized", "error": reason}, rec, keyless=True)
        rec["client"], rec["role"] = principal.client_id, principal.role
        admins = self.cfg.detection.admin_roles
        if principal.role not in admins:
            rec["decision"] = "forbidden"
            msg = f"role {principal.role!r} may not use {route} (detection.admin_roles: {sorted(admins)})"
            return None, Outcome(403, {"code": "forbidden", "error": msg}, rec)
        rec["decision"] = "served"
        return principal, Outcome(200, {}, rec)

    async def admin_flagged(self, request: Request) -> Response:
        t0, route = time.perf_counter(), "/admin/flagged"
        principal, o = await self._admin(request, route)
        assert o is not None
        if principal is not None:
            o.doc = {"flagged": await self.detection.flagged()}
        return _response(await self._finish(route, t0, o, _peer(request.scope)))

    async def admin_lift(self, request: Request) -> Response:
        t0, route = time.perf_counter(), "/admin/flagged/{client}/lift"
        principal, o = await self._admin(request, route)
        assert o is not None
        if principal is not None:
            client = request.path_params["client"]
            o.record["target"] = client
            m = await self.detection.lift(client, by=principal.client_id)
            if m is None:
                o.status, o.record["decision"] = 404, "rejected"
                o.doc = {"code": "not_mitigated", "error": f"client {client!r} has no mitigation in force"}
            else:
                o.doc = {"lifted": client, "mitigation": m}
        return _response(await self._finish(route, t0, o, _peer(request.scope)))

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = []
        if self.audit.degraded is not None:
            log.warning(self.audit.degraded)
        if self.audit.witness_problem is not None:
            log.warning("audit log witness: %s", self.audit.witness_problem)
        if self.audit.broken is not None:
            problems.append(self.audit.broken)
        if not await self.model.ready():
            problems.append("model not ready")
        if self.canary is not None and not await self.canary.canary.model.ready():
            problems.append(f"canary model {self.canary.canary.version} not ready")
        if not await self.limiter.ping():
            problems.append("rate-limit backend unreachable")
        if self.detection is not None and not await self.detection.state.ping():
            problems.append("detection state backend unreachable")
        if problems:
            return _json({"status": "not ready", "problems": problems}, 503)
        return _json({"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        roles = self.cfg.metrics.roles
        if roles is not None:
            problem = await self.auth.refresh()
            if problem is not None:
                return _json({"code": "auth_unavailable", "error": problem}, 503)
            principal, reason = self.auth.authenticate(request.scope["headers"])
            if principal is None:
                return _json({"code": "unauthorized", "error": reason}, 401)
            if principal.role not in roles:
                msg = f"role {principal.role!r} may not read /metrics (metrics.roles: {sorted(roles)})"
                return _json({"code": "forbidden", "error": msg}, 403)
        registry = aggregate(tuple(self.oncall.collectors)) if multiprocess() else self.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_endpoint(self, request: Request) -> Response:
        return Response(self._openapi_body, media_type="application/json")


async def _served_by_fast_path(request: Request) -> Response:
    """Never called: ``Guard.__call__`` answers every POST to a prediction route before Starlette
    sees it. The routes are declared so that another method gets a 405 rather than a 404."""
    raise HTTPException(405)


_FAST = re.compile(r"^/v1/models/([^/]+)/predict$|^/v2/models/([^/]+)/infer$")


async def _stream(receive: Any) -> AsyncIterator[bytes]:
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        body = msg.get("body", b"")
        if body:
            yield body
        if not msg.get("more_body", False):
            return


def _peer(scope: Any) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _response(t: tuple[int, bytes, list[tuple[str, str]]]) -> Response:
    status, body, headers = t
    r = Response(body, status_code=status, media_type="application/json")
    for k, v in headers:
        r.headers[k] = v
    return r


def _template(path: str) -> str:
    if path in TEXT_ROUTES:
        return path
    if path.startswith("/v1/models/") and path.endswith("/predict"):
        return V1
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return V2
    return "unmatched"


def build_app(cfg: GuardConfig, **kw: Any) -> Any:
    """The ASGI app for a config (``registry``, ``model``, ``limiter`` and ``observer`` may be
    injected)."""
    return Guard(cfg, **kw).app
