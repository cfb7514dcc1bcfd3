"""The guard: a Starlette app in front of a model.

Every prediction request goes through the same steps, in this order: read the body (bounded by
``server.max_body_bytes``), authenticate the API key, check the model name and the inputs, take a
rate-limit cell and charge the query budget (atomically), predict, apply the role's output policy,
write the audit record (fsynced, group commit) and only then answer. Every outcome, including
401 / 404 / 405 / 400 / 413 / 415 / 429 / 500 / 502 / 503, writes an audit record; no error body ever
carries scores or logits (nor upstream details), and a success carries only what the role's policy
allows.

Requests without a valid key (and requests to unknown routes or with the wrong method) are limited
per peer address (``server.anonymous_rate``, GCRA); their bodies are never stored in the log, and
their refusals are recorded at most once a second per address (the record counts the refusals it
stands for in ``suppressed``), so nobody without a key can fill the audit disk.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from invguard.core.access import Access
from invguard.core.errors import ConfigError
from invguard.core.target import Prediction
from invguard.guard import openapi
from invguard.guard.auditlog import AuditLog, AuditLogError, load_signing_key
from invguard.guard.auth import Authenticator, KeyRecord, KeyStore
from invguard.guard.config import GuardConfig
from invguard.guard.metrics import GuardMetrics
from invguard.guard.ratelimit import (
    BUDGET_EXHAUSTED,
    Limits,
    MemoryLimiter,
    RedisLimiter,
    gcra_step,
    never_fits,
)
from invguard.guard.upstream import UpstreamError, build_model
from invguard.policies import Chain, Noise, OutputPolicy, parse

log = logging.getLogger("invguard.guard")

V1 = "/v1/models/{name}/predict"
V2 = "/v2/models/{name}/infer"
_BOOL_TOKENS = (b"true", b"false", b"null")


@dataclass(frozen=True)
class Role:
    name: str
    policy: OutputPolicy
    policy_label: str
    limits: Limits


class BadInput(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _json(doc: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    body = _ENCODER.encode(doc).encode()
    r = Response(body, status_code=status, media_type="application/json")
    if headers:
        for k, v in headers:
            r.headers[k] = v
    return r


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row (0 log 0 = 0)."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    out: np.ndarray = -(p * logp).sum(axis=1)
    return out


def _has_bool(x: Any) -> bool:
    """True if a nested list holds true/false/null (iterative: no recursion limit to hit)."""
    stack = [x]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, bool) or v is None:
            return True
    return False


_INTERNAL = {"code": "internal_error", "error": "internal error"}
_ANON_TABLE_MAX = 100_000


def _secret(path: Path) -> bytes:
    """The HMAC secret of ``input_hmac`` (32 random bytes, hex, mode 0600), created if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"audit.hash_key: {path} does not hold a hex secret") from None


def key_paths(audit_path: str, signing_key: str | None, hash_key: str | None) -> tuple[Path, Path]:
    """The signing key and the HMAC secret: by default in ``<log dir>-keys/``, beside (never inside)
    the log directory, so that whoever can rewrite the log does not also find the key signing it."""
    p = Path(audit_path)
    keys = p.parent.with_name(p.parent.name + "-keys")
    return (
        Path(signing_key) if signing_key else keys / (p.name + ".ed25519.pem"),
        Path(hash_key) if hash_key else keys / (p.name + ".hmac-key"),
    )


class Guard:
    """Owns the components; ``app`` is the ASGI application."""

    def __init__(
        self,
        cfg: GuardConfig,
        *,
        registry: CollectorRegistry | None = None,
        model: Any = None,
        limiter: Any = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GuardMetrics(self.registry)
        self.model = model if model is not None else build_model(cfg.model)
        self.input_shape: tuple[int, ...] = tuple(self.model.input_shape)
        self.num_classes = int(self.model.num_classes)
        self.model_name = cfg.model.name
        self.max_batch = cfg.model.max_batch
        self.lo, self.hi = cfg.model.input_range
        self._finite_range = math.isfinite(self.lo) and math.isfinite(self.hi)
        self.max_body = cfg.server.max_body_bytes
        self.roles: dict[str, Role] = {}
        for name, rc in cfg.roles.items():
            pol = _unseeded(parse(rc.policy, f"roles.{name}.policy"))
            self.roles[name] = Role(
                name,
                pol,
                pol.label(),
                Limits(rc.rate.burst, rc.rate.per_second, rc.budget.day, rc.budget.week),
            )
        store = KeyStore(cfg.auth.key_store) if cfg.auth.key_store else None
        self.auth = Authenticator(
            [KeyRecord(k.id, k.sha256, k.role) for k in cfg.auth.keys],
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
        key_path, hkey_path = key_paths(cfg.audit.path, cfg.audit.signing_key, cfg.audit.hash_key)
        self.warnings: list[str] = []
        log_dir = Path(cfg.audit.path).resolve().parent
        for what, kp in (("audit.signing_key", key_path), ("audit.hash_key", hkey_path)):
            if kp.resolve().parent == log_dir:
                msg = (
                    f"{what} {kp} is inside the audit log's directory: whoever can rewrite the log can "
                    "also re-sign it; keep the key elsewhere"
                )
                self.warnings.append(msg)
                log.warning(msg)
        if key_path.parent.name.endswith("-keys"):
            key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._hkey = _secret(hkey_path)
        self.audit = AuditLog(
            cfg.audit.path,
            signing_key=load_signing_key(key_path),
            checkpoint_every=cfg.audit.checkpoint_every,
            checkpoint_seconds=cfg.audit.checkpoint_seconds,
            rotate_bytes=cfg.audit.rotate_bytes,
            fsync=cfg.audit.fsync,
            on_written=lambda n: self.metrics.audit_written.inc(n),
            on_failed=lambda n: self.metrics.audit_failures.inc(n),
        )
        self.store_inputs = cfg.audit.store_inputs
        self.hc_threshold = cfg.metrics.high_confidence_entropy
        self.openapi = openapi.build(
            model_name=self.model_name,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            max_batch=self.max_batch,
            input_range=(self.lo, self.hi),
            key_header=cfg.auth.header,
        )
        ar = cfg.server.anonymous_rate
        self._anon_limits = Limits(ar.burst, ar.per_second)
        self._anon: dict[str, dict[str, Any]] = {}
        self._anon_logged: dict[str, list[float]] = {}  # address -> [last recorded refusal, suppressed]
        self._openapi_body = json.dumps(self.openapi).encode()
        self._m_requests: dict[tuple[str, int, str], Any] = {}
        self._m_latency: dict[str, Any] = {}
        self._m_children: dict[tuple[Any, ...], Any] = {}
        self.starlette = Starlette(
            routes=[
                Route(V1, self.predict_v1, methods=["POST"]),
                Route(V2, self.infer_v2, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                Route("/openapi.json", self.openapi_endpoint, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self.http_error, Exception: self.internal_error},
            lifespan=self.lifespan,
        )
        self.starlette.router.redirect_slashes = False  # a 307 to a Host-derived URL, unaudited
        self.app = self

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        await self.audit.start()
        await self.model.start()
        self.metrics.ready.set(1)
        try:
            yield
        finally:
            self.metrics.ready.set(0)
            await self.model.close()
            await self.limiter.close()
            await self.audit.close()

    # ------------------------------------------------------------------ plumbing
    async def _read_body(self, request: Request) -> bytes:
        return await self._read_stream(request.headers.get("content-length"), request.stream())

    async def _read_stream(self, cl: str | None, stream: AsyncIterator[bytes]) -> bytes:
        if cl is not None and cl.isdigit() and int(cl) > self.max_body:
            raise BadInput(
                413,
                "payload_too_large",
                f"request body of {cl} bytes exceeds the limit of {self.max_body} bytes",
            )
        chunks = []
        total = 0
        async for chunk in stream:
            total += len(chunk)
            if total > self.max_body:
                raise BadInput(
                    413, "payload_too_large", f"request body exceeds the limit of {self.max_body} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _finish(
        self,
        route: str,
        t0: float,
        status: int,
        doc: dict[str, Any],
        record: dict[str, Any],
        headers: list[tuple[str, str]] | None = None,
        *,
        audit: bool = True,
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        record["status"] = status
        record["route"] = route
        try:
            if audit:
                await self.audit.append(record)
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
        body = _ENCODER.encode(doc).encode()
        return status, body, headers or []

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the label values are bounded (routes, roles, kinds),
        and the lookup in prometheus-client takes a lock and builds a tuple on every call."""
        key = (id(metric), *labels)
        child = self._m_children.get(key)
        if child is None:
            child = self._m_children[key] = metric.labels(*labels)
        return child

    def _record(self, body: bytes | None) -> dict[str, Any]:
        """A record's common fields; ``input_hmac`` is HMAC-SHA256 (RFC 2104) of the body under the
        guard's secret (a plain hash of a small input space could be brute-forced). The raw input
        is added (``store_inputs``) only once the client is authenticated."""
        return {
            "client": None,
            "role": None,
            "decision": "rejected",
            "policy": None,
            "input_hmac": None if body is None else hmac.digest(self._hkey, body, "sha256").hex(),
            "rows": 0,
            "labels": None,
            "entropy": None,
        }

    def _anonymous_gate(self, peer: str, rec: dict[str, Any]) -> tuple[bool, bool]:
        """Charge a request without a valid key to its peer address: ``(allowed, audit_it)``.
        A refusal is recorded at most once a second per address; the others are counted in the
        next record's ``suppressed``."""
        now = time.time()
        if len(self._anon) > _ANON_TABLE_MAX:
            self._anon.clear()
            self._anon_logged.clear()
        d = gcra_step(self._anon.setdefault(peer, {}), now, self._anon_limits, 0)
        if d.allowed:
            return True, True
        self._child(self.metrics.violations, "anonymous", "rate_limited").inc()
        st = self._anon_logged.setdefault(peer, [0.0, 0.0])
        if now - st[0] < 1.0:
            st[1] += 1
            return False, False
        rec["suppressed"] = int(st[1])
        st[0], st[1] = now, 0.0
        return False, True

    async def _anonymous(
        self,
        route: str,
        t0: float,
        peer: str,
        status: int,
        doc: dict[str, Any],
        rec: dict[str, Any],
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        allowed, audit_it = self._anonymous_gate(peer, rec)
        if not allowed:
            rec["decision"] = "rate_limited"
            doc = {
                "code": "rate_limited",
                "error": "too many requests without a valid API key from this address",
            }
            status, headers = 429, [("Retry-After", "1")]
        return await self._finish(route, t0, status, doc, rec, headers, audit=audit_it)

    def _check_batch(self, arr: np.ndarray, where: str) -> np.ndarray:
        if arr.dtype.kind not in "iuf":
            raise BadInput(
                400, "bad_input", f"{where}: every value must be a number (found {arr.dtype.kind!r} data)"
            )
        if arr.ndim == 0 or arr.shape[0] < 1:
            raise BadInput(400, "bad_input", f"{where}: give a non-empty batch of samples")
        shape = self.input_shape
        if arr.shape[1:] != shape:
            raise BadInput(
                400,
                "bad_shape",
                f"{where}: expected a batch of shape (n, {', '.join(map(str, shape))}), "
                f"got {tuple(arr.shape)}",
            )
        if arr.shape[0] > self.max_batch:
            raise BadInput(
                400,
                "batch_too_large",
                f"{where}: {arr.shape[0]} samples exceed the limit of {self.max_batch}",
            )
        # min/max propagate NaN and a NaN compares false, so NaN fails the range test; +-inf fail it
        # too when the range is finite (else isfinite is checked)
        lo, hi = arr.min(), arr.max()
        if not (lo >= self.lo and hi <= self.hi) or (not self._finite_range and not np.isfinite(arr).all()):
            raise BadInput(
                400, "bad_value", f"{where}: values must be finite numbers in [{self.lo:g}, {self.hi:g}]"
            )
        return arr.astype(np.float32)

    def _parse_v1(self, body: bytes) -> np.ndarray:
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadInput(400, "bad_json", "request body is not valid JSON") from None
        except RecursionError:
            raise BadInput(400, "bad_json", "request body is nested too deeply") from None
        if not isinstance(doc, dict):
            raise BadInput(400, "bad_input", 'request body must be a JSON object {"inputs": [...]}')
        extra = sorted(set(doc) - {"inputs"})
        if extra:
            raise BadInput(400, "bad_input", f'unknown field(s) {extra}; the body is {{"inputs": [...]}}')
        if "inputs" not in doc:
            raise BadInput(400, "bad_input", 'missing field "inputs" (a list of samples)')
        inputs = doc["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise BadInput(400, "bad_input", "inputs: must be a non-empty list of samples")
        if len(inputs) > self.max_batch:
            raise BadInput(
                400, "batch_too_large", f"inputs: {len(inputs)} samples exceed the limit of {self.max_batch}"
            )
        try:
            arr = np.array(inputs)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise BadInput(
                400,
                "bad_shape",
                f"inputs: samples must be nested lists of numbers of shape {self.input_shape} "
                "(ragged or mixed data)",
            ) from None
        if any(t in body for t in _BOOL_TOKENS) and _has_bool(inputs):
            raise BadInput(400, "bad_input", "inputs: every value must be a number (found true/false/null)")
        return self._check_batch(arr, "inputs")

    def _parse_v2(self, body: bytes) -> tuple[np.ndarray, str | None]:
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadInput(400, "bad_json", "request body is not valid JSON") from None
        except RecursionError:
            raise BadInput(400, "bad_json", "request body is nested too deeply") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            raise BadInput(
                400,
                "bad_input",
                'request body must be a JSON object {"inputs": [{name, shape, datatype, data}]}',
            )
        extra = sorted(set(doc) - {"inputs", "id"})
        if extra:
            raise BadInput(400, "bad_input", f"unknown field(s) {extra}")
        rid = doc.get("id")
        if rid is not None and (not isinstance(rid, str) or len(rid) > 128):
            raise BadInput(400, "bad_input", "id: must be a string of at most 128 characters")
        inputs = doc["inputs"]
        if len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise BadInput(
                400, "bad_input", "inputs: give exactly one input tensor {name, shape, datatype, data}"
            )
        t = inputs[0]
        extra = sorted(set(t) - {"name", "shape", "datatype", "data"})
        missing = sorted({"name", "shape", "datatype", "data"} - set(t))
        if extra or missing:
            raise BadInput(400, "bad_input", f"inputs[0]: missing {missing} / unknown {extra} fields")
        if not isinstance(t["name"], str) or len(t["name"]) > 64:
            raise BadInput(400, "bad_input", "inputs[0].name: must be a string of at most 64 characters")
        if t["datatype"] not in ("FP32", "FP64"):
            raise BadInput(
                400, "bad_dtype", f"inputs[0].datatype: expected FP32 or FP64, got {t['datatype']!r}"
            )
        shape = t["shape"]
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        ):
            raise BadInput(400, "bad_shape", "inputs[0].shape: must be a list of positive integers")
        if tuple(shape[1:]) != self.input_shape:
            raise BadInput(
                400,
                "bad_shape",
                f"inputs[0].shape: expected [n, {', '.join(map(str, self.input_shape))}], got {shape}",
            )
        if shape[0] > self.max_batch:
            raise BadInput(
                400,
                "batch_too_large",
                f"inputs[0].shape: {shape[0]} samples exceed the limit of {self.max_batch}",
            )
        data = t["data"]
        if not isinstance(data, list) or _has_bool(data):
            raise BadInput(400, "bad_input", "inputs[0].data: must be a flat list of numbers")
        try:
            arr = np.array(data)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise BadInput(400, "bad_input", "inputs[0].data: must be a flat list of numbers") from None
        if arr.dtype.kind not in "iuf" or arr.ndim != 1:
            raise BadInput(400, "bad_input", "inputs[0].data: must be a flat list of numbers")
        if arr.size != math.prod(shape):
            raise BadInput(400, "bad_shape", f"inputs[0].data: {arr.size} values do not fill shape {shape}")
        return self._check_batch(arr.reshape(shape), "inputs[0]"), rid

    # ------------------------------------------------------------------ the prediction pipeline
    async def _guarded(
        self,
        headers: list[tuple[bytes, bytes]],
        stream: AsyncIterator[bytes],
        name: str | None,
        route: str,
        peer: str = "",
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        t0 = time.perf_counter()
        rec = self._record(None)
        charged: list[Any] = []  # (client, limits, rows) once the budget was charged
        try:
            return await self._pipeline(headers, stream, name, route, peer, t0, rec, charged)
        except Exception:  # the last resort: audited and metered, never a traceback or model outputs
            log.exception("internal error on %s", route)
            if charged:
                with contextlib.suppress(Exception):
                    await self.limiter.refund(*charged)
            rec.update(decision="error", labels=None, entropy=None)
            return await self._finish(route, t0, 500, dict(_INTERNAL), rec)

    def _content_problem(self, ctype: str | None, cenc: str | None) -> BadInput | None:
        if cenc is not None and cenc.strip().lower() not in ("", "identity"):
            return BadInput(
                415,
                "unsupported_media_type",
                f"Content-Encoding {cenc.strip()!r} is not supported; send the JSON body unencoded",
            )
        if ctype is not None:
            mt = ctype.split(";", 1)[0].strip().lower()
            if mt != "application/json" and not (mt.startswith("application/") and mt.endswith("+json")):
                return BadInput(
                    415,
                    "unsupported_media_type",
                    f"Content-Type {mt!r} is not supported; send application/json",
                )
        return None

    async def _pipeline(
        self,
        headers: list[tuple[bytes, bytes]],
        stream: AsyncIterator[bytes],
        name: str | None,
        route: str,
        peer: str,
        t0: float,
        rec: dict[str, Any],
        charged: list[Any],
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        cl = ctype = cenc = None
        for k, v in headers:
            lk = k.lower()
            if lk == b"content-length":
                cl = v.decode("latin-1")
            elif lk == b"content-type":
                ctype = v.decode("latin-1")
            elif lk == b"content-encoding":
                cenc = v.decode("latin-1")
        try:
            body = await self._read_stream(cl, stream)
        except BadInput as e:
            return await self._anonymous(route, t0, peer, e.status, {"code": e.code, "error": str(e)}, rec)
        rec["input_hmac"] = hmac.digest(self._hkey, body, "sha256").hex()
        problem = await self.auth.refresh()
        if problem is not None:  # the key store changed and cannot be read: fail closed
            rec["decision"] = "rejected"
            return await self._finish(route, t0, 503, {"code": "auth_unavailable", "error": problem}, rec)
        principal, reason = self.auth.authenticate(headers)
        if principal is None:
            rec["decision"] = "unauthorized"
            return await self._anonymous(
                route,
                t0,
                peer,
                401,
                {"code": "unauthorized", "error": reason},
                rec,
                [("WWW-Authenticate", 'Bearer realm="invguard"')],
            )
        role = self.roles[principal.role]
        rec["client"], rec["role"], rec["policy"] = principal.client_id, role.name, role.policy_label
        if self.store_inputs:
            rec["input"] = body.decode("utf-8", "replace")
        x: np.ndarray | None = None
        rid: str | None = None
        err: BadInput | None = None
        try:
            if name != self.model_name:
                raise BadInput(
                    404, "unknown_model", f"unknown model {name!r}; this guard serves {self.model_name!r}"
                )
            bad = self._content_problem(ctype, cenc) if (ctype is not None or cenc is not None) else None
            if bad is not None:
                raise bad
            if route == V1:
                x = self._parse_v1(body)
            else:
                x, rid = self._parse_v2(body)
            too_big = never_fits(role.limits, int(x.shape[0]))
            if too_big is not None:
                x = None
                raise BadInput(400, "batch_exceeds_budget", too_big)
        except BadInput as e:
            err = e
        rows = 0 if x is None else int(x.shape[0])
        try:
            decision = await self.limiter.acquire(principal.client_id, role.limits, rows)
        except Exception as e:  # the shared limiter is down: fail closed, never serve unmetered
            self.metrics.limiter_errors.inc()
            rec["decision"] = "rejected"
            msg = f"the rate-limit backend is unavailable ({type(e).__name__}); try later"
            return await self._finish(route, t0, 503, {"code": "limiter_unavailable", "error": msg}, rec)
        rl_headers = decision.headers(role.limits)
        if not decision.allowed:
            rec["decision"] = decision.outcome
            self._child(self.metrics.violations, role.name, decision.outcome).inc()
            msg = (
                "query budget exhausted for this period"
                if decision.outcome == BUDGET_EXHAUSTED
                else "rate limit exceeded"
            )
            return await self._finish(
                route, t0, 429, {"code": decision.outcome, "error": msg}, rec, rl_headers
            )
        if err is not None or x is None:
            assert err is not None
            return await self._finish(
                route, t0, err.status, {"code": err.code, "error": str(err)}, rec, rl_headers
            )
        if rows:
            charged.extend((principal.client_id, role.limits, rows))
        try:
            pred = await self.model.predict(x)
        except Exception as e:  # any failure of the model or the upstream: 502, details only in the log
            kind = e.kind if isinstance(e, UpstreamError) else "model_error"
            self.metrics.upstream_errors.labels(kind).inc()
            detail = f"{type(e).__name__}: {e}"[:500]
            log.warning("model error on %s: %s", route, detail)
            await self._refund(charged)
            rec["decision"], rec["error"] = "upstream_error", detail
            msg = "upstream model server error" if isinstance(e, UpstreamError) else "model error"
            return await self._finish(
                route, t0, 502, {"code": "upstream_error", "error": msg}, rec, rl_headers
            )
        out = role.policy.apply(pred)
        cap = min(out.access, role.policy.cap)
        scores = out.scores if cap >= Access.SCORES else None
        logits = out.logits if cap >= Access.LOGITS else None
        if (scores is not None and not np.all(np.isfinite(scores))) or (
            logits is not None and not np.all(np.isfinite(logits))
        ):
            await self._refund(charged)
            rec["decision"] = "rejected"
            return await self._finish(
                route,
                t0,
                400,
                {"code": "bad_value", "error": "the model gave non-finite outputs for these inputs"},
                rec,
                rl_headers,
            )
        labels = out.labels.tolist()
        rec["decision"], rec["rows"], rec["labels"] = "served", rows, labels
        probs = (
            scores
            if scores is not None
            else (None if logits is None else Prediction.from_logits(logits, Access.SCORES).scores)
        )
        if probs is not None:
            ent = _entropy(np.asarray(probs, dtype=np.float64)).tolist()
            rec["entropy"] = [round(e, 6) for e in ent]
            hist = self._child(self.metrics.entropy, role.name)
            n_conf = 0
            for h in ent:
                hist.observe(h)
                n_conf += h < self.hc_threshold
            if n_conf:
                self._child(self.metrics.high_confidence, role.name).inc(n_conf)
        self._child(self.metrics.rows, role.name).inc(rows)
        access = "logits" if logits is not None else ("scores" if scores is not None else "label")
        if route == V1:
            doc: dict[str, Any] = {"labels": labels, "policy": role.policy_label, "access": access}
            if scores is not None:
                doc["scores"] = scores.tolist()
                self._child(self.metrics.sensitive_fields, route, role.name, "scores").inc()
            if logits is not None:
                doc["logits"] = logits.tolist()
                self._child(self.metrics.sensitive_fields, route, role.name, "logits").inc()
        else:
            outputs: list[dict[str, Any]] = [
                {"name": "labels", "shape": [rows], "datatype": "INT64", "data": labels}
            ]
            for fname, arr in (("scores", scores), ("logits", logits)):
                if arr is not None:
                    outputs.append(
                        {
                            "name": fname,
                            "shape": list(arr.shape),
                            "datatype": "FP64",
                            "data": arr.reshape(-1).tolist(),
                        }
                    )
                    self._child(self.metrics.sensitive_fields, route, role.name, fname).inc()
            doc = {
                "model_name": self.model_name,
                "outputs": outputs,
                "parameters": {"policy": role.policy_label},
            }
            if rid is not None:
                doc["id"] = rid
        return await self._finish(route, t0, 200, doc, rec, rl_headers)

    async def _refund(self, charged: list[Any]) -> None:
        """Give the rows back (the model did not answer): a failed request must not spend budget."""
        if charged:
            try:
                await self.limiter.refund(*charged)
            except Exception:  # the limiter is down: the rows stay charged (fail closed)
                self.metrics.limiter_errors.inc()
            charged.clear()

    async def predict_v1(self, request: Request) -> Response:
        t = await self._guarded(
            request.scope["headers"],
            request.stream(),
            request.path_params.get("name"),
            V1,
            _peer(request.scope),
        )
        return _response(t)

    async def infer_v2(self, request: Request) -> Response:
        t = await self._guarded(
            request.scope["headers"],
            request.stream(),
            request.path_params.get("name"),
            V2,
            _peer(request.scope),
        )
        return _response(t)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI entry point: prediction routes are served directly (the hot path), everything
        else (service routes, unknown routes, wrong methods, lifespan) by the Starlette app."""
        if scope["type"] == "http" and scope["method"] == "POST":
            m = _FAST.match(scope["path"])
            if m is not None:
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
            body: bytes | None = await self._read_body(request)
        except BadInput:
            body = None
        rec = self._record(body)  # no key was checked: the body is never stored
        route = (
            "unmatched"
            if status == 404
            else request.url.path
            if request.url.path in ("/healthz", "/readyz", "/metrics", "/openapi.json")
            else _template(request.url.path)
        )
        return _response(
            await self._anonymous(
                route,
                t0,
                _peer(request.scope),
                status if 400 <= status < 500 else 400,
                {"code": code, "error": msg},
                rec,
            )
        )

    async def internal_error(self, request: Request, exc: Exception) -> Response:
        # the last resort: never a traceback, never model outputs; still audited and metered
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        rec = self._record(None)
        rec["decision"] = "error"
        t = await self._finish(_template(request.url.path), time.perf_counter(), 500, dict(_INTERNAL), rec)
        return _response(t)

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = []
        if self.audit.degraded is not None:
            log.warning(self.audit.degraded)
        if self.audit.broken is not None:
            problems.append(self.audit.broken)
        if not await self.model.ready():
            problems.append("model not ready")
        if not await self.limiter.ping():
            problems.append("rate-limit backend unreachable")
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
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi_endpoint(self, request: Request) -> Response:
        return Response(self._openapi_body, media_type="application/json")


def _unseeded(policy: OutputPolicy) -> OutputPolicy:
    """The guard draws policy noise from OS entropy: a seed in the config would hand an attacker
    the noise stream to subtract, so seeded ``Noise`` steps are rebuilt unseeded."""
    steps = [Noise(p.scale, p.kind, seed=None) if isinstance(p, Noise) else p for p in policy.steps()]
    return steps[0] if len(steps) == 1 else Chain(*steps)


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
    if path.startswith("/v1/models/") and path.endswith("/predict"):
        return V1
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return V2
    return "unmatched"


def build_app(cfg: GuardConfig, **kw: Any) -> Any:
    """The ASGI app for a config (``registry``, ``model`` and ``limiter`` may be injected)."""
    return Guard(cfg, **kw).app
