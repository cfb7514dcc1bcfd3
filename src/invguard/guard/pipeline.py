"""The prediction request pipeline: explicit stages, each either passing the exchange on or ending it
with a typed :class:`Outcome`.

``read`` (body bounded by ``server.max_body_bytes``) -> ``authenticate`` (API key -> role) ->
``decode`` (model name, media type, inputs; a problem here is answered only after the rate limit,
so bad requests cost a cell) -> ``admit`` (rate limit and row budgets, atomically) -> ``observe``
(detection sees the request; a mitigation may refuse it or swap the output policy) -> ``predict``
-> ``respond`` (the output policy, the SLI metrics, the wire format).

The pipeline never writes the audit log itself: the app writes the outcome's record (fsynced)
before it sends the answer, so every outcome, including refusals and internal errors, is audited.
An outcome marked ``keyless`` (no valid key) is charged to the keyless gate of the peer address.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from invguard.core.access import Access
from invguard.core.target import Prediction
from invguard.guard.auth import Authenticator
from invguard.guard.codec import V1, BadInput, content_problem, encode_v1, read_body
from invguard.guard.metrics import GuardMetrics
from invguard.guard.ratelimit import BUDGET_EXHAUSTED, Limits, never_fits
from invguard.guard.upstream import UpstreamError
from invguard.policies import OutputPolicy
from invguard.wire import kserve

log = logging.getLogger("invguard.guard")

INTERNAL = {"code": "internal_error", "error": "internal error"}


@dataclass(frozen=True)
class Role:
    name: str
    policy: OutputPolicy
    policy_label: str
    limits: Limits


@dataclass
class Outcome:
    """How a request ends: the status and JSON document to send, its audit record, extra headers,
    and whether it is charged to the keyless gate (no valid key was given)."""

    status: int
    doc: dict[str, Any]
    record: dict[str, Any]
    headers: list[tuple[str, str]] | None = None
    keyless: bool = False


@dataclass
class Exchange:
    """One request as it moves through the stages."""

    route: str
    name: str | None
    peer: str
    record: dict[str, Any]
    body: bytes = b""
    client: str | None = None
    role: Role | None = None
    x: np.ndarray | None = None
    rid: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    budget_key: str | None = None  # whose budget: the key's, its owner's or the role's (budget.scope)
    charged: tuple[str, Limits, int] | None = None  # (budget key, limits, rows) once the budget is charged
    policy: OutputPolicy | None = None  # the policy answering: the role's, unless a mitigation swapped it
    text: Any = None  # a text route's validated request (invguard.wire.openai.TextRequest)
    arm: Any = None  # the model version answering this client (a canary is configured)
    findings: int = 0  # detectors that fired on this request (set by the detection stage)


@dataclass(frozen=True)
class Verdict:
    """What the detection stage decides for one request: nothing (``None`` from ``observe``), a
    refusal (``status``, ``code``, ``message``, extra ``headers``), or a stricter ``policy`` whose
    answer is shown in the role's shape (same fields, same headers: nothing tells the client)."""

    policy: OutputPolicy | None = None
    status: int | None = None
    code: str = ""
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    decision: str = "mitigated"


class Observer(Protocol):
    """The detection stage: sees every admitted request with its inputs, before the model answers."""

    async def observe(self, ex: Exchange) -> Verdict | None: ...


def record_template(hkey: bytes, body: bytes | None) -> dict[str, Any]:
    """A record's common fields; ``input_hmac`` is HMAC-SHA256 (RFC 2104) of the body under the
    guard's secret (a plain hash of a small input space could be brute-forced). The raw input is
    added (``store_inputs``) only once the client is authenticated."""
    return {
        "client": None,
        "role": None,
        "decision": "rejected",
        "policy": None,
        "input_hmac": None if body is None else hmac.digest(hkey, body, "sha256").hex(),
        "rows": 0,
        "labels": None,
        "entropy": None,
    }


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row (0 log 0 = 0)."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    out: np.ndarray = -(p * logp).sum(axis=1)
    return out


def _error(ex: Exchange, status: int, code: str, msg: str, **kw: Any) -> Outcome:
    return Outcome(status, {"code": code, "error": msg}, ex.record, **kw)


class Pipeline:
    """The stages over the guard's components (all injected)."""

    def __init__(
        self,
        *,
        model: Any,
        model_name: str,
        roles: dict[str, Role],
        auth: Authenticator,
        limiter: Any,
        metrics: GuardMetrics,
        child: Callable[..., Any],
        decode: Callable[[str, bytes], tuple[np.ndarray, str | None]],
        hkey: bytes,
        max_body: int,
        store_inputs: bool,
        high_confidence_entropy: float,
        observer: Observer | None = None,
        body_timeout: float | None = None,
        canary: Any = None,
    ) -> None:
        self.model = model
        self.canary = canary  # invguard.guard.canary.Canary: which version answers each client
        self.body_timeout = body_timeout
        self.model_name = model_name
        self.num_classes = int(model.num_classes)
        self.roles = roles
        self.auth = auth
        self.limiter = limiter
        self.metrics = metrics
        self.child = child
        self.decode_body = decode
        self.hkey = hkey
        self.max_body = max_body
        self.store_inputs = store_inputs
        self.hc_threshold = high_confidence_entropy
        self.observer = observer

    async def run(
        self,
        headers: list[tuple[bytes, bytes]],
        stream: AsyncIterator[bytes],
        name: str | None,
        route: str,
        peer: str,
    ) -> Outcome:
        ex = Exchange(route, name, peer, record_template(self.hkey, None))
        try:
            return await self._stages(ex, headers, stream)
        except Exception:  # the last resort: audited and metered, never a traceback or model outputs
            log.exception("internal error on %s", route)
            if ex.charged is not None:
                with contextlib.suppress(Exception):
                    await self.limiter.refund(*ex.charged)
            ex.record.update(decision="error", labels=None, entropy=None)
            return Outcome(500, dict(INTERNAL), ex.record)

    async def _stages(
        self, ex: Exchange, headers: list[tuple[bytes, bytes]], stream: AsyncIterator[bytes]
    ) -> Outcome:
        cl = ctype = cenc = None
        for k, v in headers:
            lk = k.lower()
            if lk == b"content-length":
                cl = v.decode("latin-1")
            elif lk == b"content-type":
                ctype = v.decode("latin-1")
            elif lk == b"content-encoding":
                cenc = v.decode("latin-1")
        end = await self.read(ex, cl, stream)
        if end is None:
            end = await self.authenticate(ex, headers)
        if end is not None:
            return end
        if self.canary is not None:
            assert ex.client is not None
            ex.arm = self.canary.choose(ex.client)
            ex.record["model_version"] = ex.arm.version
        err = self.decode(ex, ctype, cenc)
        end = await self.admit(ex, err)
        if end is None and self.observer is not None:
            end = await self.observe(ex)
        if end is None:
            end = await self.predict_and_respond(ex)
        return end

    # ------------------------------------------------------------------ stages
    async def read(self, ex: Exchange, cl: str | None, stream: AsyncIterator[bytes]) -> Outcome | None:
        try:
            ex.body = await read_body(cl, stream, self.max_body, self.body_timeout)
        except BadInput as e:
            close = [("Connection", "close")] if e.status == 408 else None  # the rest may never come
            return _error(ex, e.status, e.code, str(e), headers=close, keyless=True)
        ex.record["input_hmac"] = hmac.digest(self.hkey, ex.body, "sha256").hex()
        return None

    async def authenticate(self, ex: Exchange, headers: list[tuple[bytes, bytes]]) -> Outcome | None:
        problem = await self.auth.refresh()
        if problem is not None:  # the key store changed and cannot be read: fail closed
            ex.record["decision"] = "rejected"
            return _error(ex, 503, "auth_unavailable", problem)
        principal, reason = self.auth.authenticate(headers)
        if principal is None:
            ex.record["decision"] = "unauthorized"
            return _error(
                ex,
                401,
                "unauthorized",
                reason,
                headers=[("WWW-Authenticate", 'Bearer realm="invguard"')],
                keyless=True,
            )
        role = self.roles[principal.role]
        ex.client, ex.role, ex.policy = principal.client_id, role, role.policy
        ex.budget_key = role.limits.budget_key(principal.client_id, principal.owner, role.name)
        rec = ex.record
        rec["client"], rec["role"], rec["policy"] = principal.client_id, role.name, role.policy_label
        if self.store_inputs:
            rec["input"] = ex.body.decode("utf-8", "replace")
        return None

    def decode(self, ex: Exchange, ctype: str | None, cenc: str | None) -> BadInput | None:
        """The inputs, or the problem with them (answered after ``admit``: a bad request costs a cell)."""
        assert ex.role is not None
        try:
            if ex.name != self.model_name:
                raise BadInput(
                    404, "unknown_model", f"unknown model {ex.name!r}; this guard serves {self.model_name!r}"
                )
            bad = content_problem(ctype, cenc) if (ctype is not None or cenc is not None) else None
            if bad is not None:
                raise bad
            x, ex.rid = self.decode_body(ex.route, ex.body)
            too_big = never_fits(ex.role.limits, int(x.shape[0]))
            if too_big is not None:
                raise BadInput(400, "batch_exceeds_budget", too_big)
            ex.x = x
        except BadInput as e:
            return e
        return None

    async def admit(self, ex: Exchange, err: BadInput | None) -> Outcome | None:
        assert ex.role is not None and ex.client is not None
        role, rec = ex.role, ex.record
        rows = 0 if ex.x is None else int(ex.x.shape[0])
        try:
            decision = await self.limiter.acquire(ex.client, role.limits, rows, budget_key=ex.budget_key)
        except Exception as e:  # the shared limiter is down: fail closed, never serve unmetered
            self.metrics.limiter_errors.inc()
            rec["decision"] = "rejected"
            msg = f"the rate-limit backend is unavailable ({type(e).__name__}); try later"
            return _error(ex, 503, "limiter_unavailable", msg)
        ex.headers = decision.headers(role.limits)
        if not decision.allowed:
            rec["decision"] = decision.outcome
            self.child(self.metrics.violations, role.name, decision.outcome).inc()
            msg = (
                "query budget exhausted for this period"
                if decision.outcome == BUDGET_EXHAUSTED
                else "rate limit exceeded"
            )
            return _error(ex, 429, decision.outcome, msg, headers=ex.headers)
        if err is not None or ex.x is None:
            assert err is not None
            return _error(ex, err.status, err.code, str(err), headers=ex.headers)
        if rows:
            ex.charged = (ex.budget_key or ex.client, role.limits, rows)
        return None

    async def observe(self, ex: Exchange) -> Outcome | None:
        assert self.observer is not None
        try:
            verdict = await self.observer.observe(ex)
        except Exception as e:  # the detection state is unreachable: fail closed, never serve unwatched
            log.warning("detection failed on %s: %s: %s", ex.route, type(e).__name__, e)
            await self._refund(ex)
            ex.record["decision"] = "rejected"
            msg = f"the detection backend is unavailable ({type(e).__name__}); try later"
            return _error(ex, 503, "detection_unavailable", msg, headers=ex.headers)
        if ex.arm is not None:
            self.canary.observed(ex.arm, ex.client, ex.findings > 0)
        if verdict is None:
            return None
        if verdict.status is not None:
            await self._refund(ex)
            ex.record["decision"] = verdict.decision
            return _error(
                ex, verdict.status, verdict.code, verdict.message, headers=ex.headers + list(verdict.headers)
            )
        if verdict.policy is not None:
            ex.policy = verdict.policy
            ex.record["mitigated"] = verdict.decision
        return None

    async def predict_and_respond(self, ex: Exchange) -> Outcome:
        assert ex.role is not None and ex.x is not None and ex.policy is not None
        role, rec, route, x = ex.role, ex.record, ex.route, ex.x
        rows = int(x.shape[0])
        model = self.model if ex.arm is None else ex.arm.model
        try:
            pred = await model.predict(x)
        except Exception as e:  # any failure of the model or the upstream: 502, details only in the log
            kind = e.kind if isinstance(e, UpstreamError) else "model_error"
            self.metrics.upstream_errors.labels(kind).inc()
            detail = f"{type(e).__name__}: {e}"[:500]
            log.warning("model error on %s: %s", route, detail)
            await self._refund(ex)
            rec["decision"], rec["error"] = "upstream_error", detail
            msg = "upstream model server error" if isinstance(e, UpstreamError) else "model error"
            return _error(ex, 502, "upstream_error", msg, headers=ex.headers)
        scores, logits, labels = self._answer(ex, pred)
        if (scores is not None and not np.all(np.isfinite(scores))) or (
            logits is not None and not np.all(np.isfinite(logits))
        ):
            await self._refund(ex)
            rec["decision"] = "rejected"
            msg = "the model gave non-finite outputs for these inputs"
            return _error(ex, 400, "bad_value", msg, headers=ex.headers)
        rec["decision"], rec["rows"], rec["labels"] = "served", rows, labels
        probs = (
            scores
            if scores is not None
            else (None if logits is None else Prediction.from_logits(logits, Access.SCORES).scores)
        )
        if probs is not None:
            ent = _entropy(np.asarray(probs, dtype=np.float64)).tolist()
            rec["entropy"] = [round(e, 6) for e in ent]
            n_conf = sum(h < self.hc_threshold for h in ent)
            if "mitigated" in rec:  # the guard's own mitigation: counted apart, never in M2
                self.child(self.metrics.mitigated_rows, role.name).inc(len(ent))
                if n_conf:
                    self.child(self.metrics.mitigated_high_confidence, role.name).inc(n_conf)
            else:
                hist = self.child(self.metrics.entropy, role.name)
                for h in ent:
                    hist.observe(h)
                if n_conf:
                    self.child(self.metrics.high_confidence, role.name).inc(n_conf)
            if ex.arm is not None:
                self.canary.served(ex.arm, ex.client, len(ent), int(n_conf))
        self.child(self.metrics.rows, role.name).inc(rows)
        access = "logits" if logits is not None else ("scores" if scores is not None else "label")
        for fname, arr in (("scores", scores), ("logits", logits)):
            if arr is not None:
                self.child(self.metrics.sensitive_fields, route, role.name, fname).inc()
        if route == V1:
            doc = encode_v1(labels, role.policy_label, access, scores, logits)
        else:
            doc = kserve.response(self.model_name, labels, role.policy_label, scores, logits, ex.rid)
        return Outcome(200, doc, rec, ex.headers)

    def _answer(
        self, ex: Exchange, pred: Prediction
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[int]]:
        """The fields the role shows, filled by the answering policy. A policy swapped in by a
        mitigation keeps the role's shape: where it withholds a field the role shows, the field is
        filled from what it does give (one-hot scores from a label, scores from logits), so the
        answer's schema never tells the client it was mitigated."""
        assert ex.role is not None and ex.policy is not None
        out = ex.policy.apply(pred)
        cap = min(out.access, ex.policy.cap)
        scores = out.scores if cap >= Access.SCORES else None
        logits = out.logits if cap >= Access.LOGITS else None
        if ex.policy is not ex.role.policy:
            shown_out = ex.role.policy.apply(pred)
            shown = min(shown_out.access, ex.role.policy.cap)
            k = self.num_classes
            if shown < Access.LOGITS:
                logits = None
            if shown < Access.SCORES:
                scores = None
            if shown >= Access.SCORES and scores is None:
                scores = _one_hot(out.labels, k)
            if shown >= Access.LOGITS and logits is None:
                base = scores if scores is not None else _one_hot(out.labels, k)
                logits = np.log(np.clip(base, 1e-6, None))
        return scores, logits, out.labels.tolist()

    async def _refund(self, ex: Exchange) -> None:
        """Give the rows back (the model did not answer): a failed request must not spend budget."""
        if ex.charged is not None:
            try:
                await self.limiter.refund(*ex.charged)
            except Exception:  # the limiter is down: the rows stay charged (fail closed)
                self.metrics.limiter_errors.inc()
            ex.charged = None


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), labels] = 1.0
    return out
