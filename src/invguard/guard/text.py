"""The guard in front of a language model: OpenAI-compatible ``/v1/completions`` and
``/v1/chat/completions`` with per-role text policies.

The same stages as for classifiers (:class:`~invguard.guard.pipeline.Pipeline`): the body is read
and bounded, the key authenticated, the request validated (``invguard.wire.openai``), then the rate
limit and the role's budget are charged in **tokens**: an upper bound before the model runs (the
choices times ``max_tokens``, plus the UTF-8 length of echoed prompts), the unused part refunded
once the answer is in, so a role's ``budget.day`` / ``budget.week`` are token budgets. The model
answers in full (in process, or an upstream OpenAI-compatible server through a pooled aiohttp
client, asked for as many alternatives as the role may see); the role's text policy then strips or
rounds log-probabilities (a token's own log-probability below LOGPROBS only when it is among the
top k) and masks secrets in every returned text. Masked matches are counted per pattern in
``invguard_guard_text_secrets_masked_total`` (the M4 "sensitive fields returned" for text) and in
the audit record (``masked``: counts only; generated text is never written to the log).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import numpy as np

from invguard.core.access import TextAccess
from invguard.guard.codec import BadInput, content_problem
from invguard.guard.pipeline import Exchange, Outcome, Pipeline, _error
from invguard.guard.ratelimit import never_fits
from invguard.guard.upstream import UpstreamError
from invguard.models.lm_server import Answer, answer, encode
from invguard.policies.text import TextPolicy
from invguard.wire.openai import (
    CHAT,
    COMPLETIONS,
    MAX_TOP,
    TextRequest,
    WireError,
    parse_request,
    parse_response,
)
from invguard.wire.urls import redact_url

log = logging.getLogger("invguard.guard")

TEXT_ROUTES = (COMPLETIONS, CHAT)


class LocalTextModel:
    """A local causal LM (``kind: hf_lm``) answered in a worker thread, one request at a time."""

    num_classes = 0
    input_shape: tuple[int, ...] = ()

    def __init__(self, target: Any) -> None:
        self.target = target
        self._lock = asyncio.Lock()

    async def answer(self, req: TextRequest) -> Answer:
        async with self._lock:
            return await asyncio.to_thread(answer, self.target, req)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ready(self) -> bool:
        return True


class UpstreamTextModel:
    """An OpenAI-compatible server (``kind: openai``) through a pooled aiohttp session."""

    num_classes = 0
    input_shape: tuple[int, ...] = ()

    def __init__(
        self, url: str, model: str, *, timeout: float = 30.0, pool_size: int = 64, api_key: str | None = None
    ):
        root = url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self.model = model
        self.timeout = timeout
        self.pool_size = pool_size
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.pool_size, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self) -> bool:
        return self._session is not None

    async def answer(self, req: TextRequest) -> Answer:
        import aiohttp

        from invguard.wire.openai import request_body

        if self._session is None:
            raise UpstreamError("unavailable", "the upstream client is not started")
        url = self.root + req.route
        where = f"upstream POST {redact_url(url)}"
        try:
            async with self._session.post(
                url, data=json.dumps(request_body(req, self.model)), headers=self._headers
            ) as r:
                status, raw = r.status, await r.read()
        except TimeoutError:
            raise UpstreamError("timeout", f"{where}: no answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as e:
            raise UpstreamError("unreachable", f"{where}: {type(e).__name__}") from None
        if status >= 400:
            raise UpstreamError("status", f"{where}: answered HTTP {status}")
        try:
            doc = json.loads(raw)
            parsed = parse_response(req.route, doc, req.choices, TextAccess.LOGPROBS)
            usage = doc.get("usage") or {}
            pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        except (ValueError, WireError, TypeError, AttributeError) as e:
            raise UpstreamError("malformed", f"{where}: the answer is not a valid completion ({e})") from None
        if req.logprobs and any(v is None for _, v, _ in parsed):
            raise UpstreamError("malformed", f"{where}: log-probabilities were asked for and not given")
        return Answer(
            tuple(t for t, _, _ in parsed),
            tuple(v for _, v, _ in parsed),
            tuple(f for _, _, f in parsed),
            pt,
            ct,
        )


def build_text_model(cfg: Any) -> LocalTextModel | UpstreamTextModel:
    """The configured language model: ``kind: hf_lm`` (``path``: a local model directory or
    ``reference/<name>`` for an invguard reference LM) or ``kind: openai`` (``upstream.url``)."""
    if cfg.kind == "openai":
        up = cfg.upstream
        return UpstreamTextModel(
            up.url, cfg.upstream_model or cfg.name, timeout=up.timeout, pool_size=up.pool_size
        )
    from invguard.targets.hf_lm import HFLMTarget

    path = cfg.path
    if path.startswith("reference/"):
        from invguard.models.lm import reference_lm

        path, _ = reference_lm(path.split("/", 1)[1])
    return LocalTextModel(HFLMTarget(path, name=cfg.name))


def text_openapi(model_name: str, key_header: str) -> dict[str, Any]:
    """The OpenAPI document of a text guard: the two OpenAI-compatible routes."""
    op = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "the completion, reduced by the role's text policy"},
            "400": {"description": "bad request"},
            "401": {"description": "no valid key"},
            "429": {"description": "rate limit or token budget"},
            "502": {"description": "upstream model server error"},
        },
        "security": [{"key": []}],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"invguard guard for {model_name}", "version": "1"},
        "paths": {COMPLETIONS: {"post": op}, CHAT: {"post": op}},
        "components": {"securitySchemes": {"key": {"type": "apiKey", "in": "header", "name": key_header}}},
    }


def token_bound(req: TextRequest) -> int:
    """An upper bound on the tokens a request can cost: every choice's ``max_tokens`` plus the
    UTF-8 length of echoed prompts (which bounds their byte-level tokens)."""
    echoed = sum(len(p.encode()) + 1 for p in req.prompts) * req.n if req.echo else 0
    return req.choices * req.max_tokens + echoed


class TextPipeline(Pipeline):
    """The pipeline's decode and respond stages for text routes (the other stages are shared)."""

    def __init__(self, *, text_policies: dict[str, TextPolicy], max_tokens: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.text_policies = text_policies
        self.max_tokens = max_tokens

    def decode(self, ex: Exchange, ctype: str | None, cenc: str | None) -> BadInput | None:
        assert ex.role is not None
        try:
            bad = content_problem(ctype, cenc) if (ctype is not None or cenc is not None) else None
            if bad is not None:
                raise bad
            try:
                doc = json.loads(ex.body)
            except ValueError as e:
                raise BadInput(
                    400, "bad_json", f"the body is not valid JSON ({e.__class__.__name__})"
                ) from None
            try:
                req = parse_request(ex.route, doc, self.max_tokens)
            except WireError as e:
                raise BadInput(400, "bad_request", str(e)) from None
            if req.model is not None and req.model != self.model_name:
                raise BadInput(
                    404,
                    "unknown_model",
                    f"unknown model {req.model!r}; this guard serves {self.model_name!r}",
                )
            tokens = token_bound(req)
            too_big = never_fits(ex.role.limits, tokens)
            if too_big is not None:
                raise BadInput(400, "batch_exceeds_budget", too_big.replace("rows", "tokens"))
            ex.text = req
            ex.x = np.empty((tokens, 0), dtype=np.float32)  # the budget stages count its rows: tokens
        except BadInput as e:
            return e
        return None

    def _model_request(self, req: TextRequest, policy: TextPolicy) -> TextRequest:
        """What the model is asked: at TOPK_LOGPROBS the policy's k alternatives (to decide which
        own log-probabilities may be shown); otherwise what the client asked for."""
        if not req.logprobs or policy.cap < TextAccess.TOPK_LOGPROBS:
            return TextRequest(req.route, req.model, req.prompts, req.max_tokens, req.temperature, req.top_k,
                               0, False, req.echo, req.seed, req.n)  # fmt: skip
        k, _ = policy.limits()
        ask = req.top_logprobs if policy.cap >= TextAccess.LOGPROBS else max(1, k or req.top_logprobs)
        return TextRequest(req.route, req.model, req.prompts, req.max_tokens, req.temperature, req.top_k,
                           min(MAX_TOP, ask), True, req.echo, req.seed, req.n)  # fmt: skip

    async def predict_and_respond(self, ex: Exchange) -> Outcome:
        assert ex.role is not None and ex.x is not None and ex.text is not None
        role, rec, req = ex.role, ex.record, ex.text
        policy = self.text_policies[role.name]
        try:
            ans = await self.model.answer(self._model_request(req, policy))
        except Exception as e:  # any failure of the model or the upstream: 502, details only in the log
            kind = e.kind if isinstance(e, UpstreamError) else "model_error"
            self.metrics.upstream_errors.labels(kind).inc()
            detail = f"{type(e).__name__}: {e}"[:500]
            log.warning("model error on %s: %s", ex.route, detail)
            await self._refund(ex)
            rec["decision"], rec["error"] = "upstream_error", detail
            msg = "upstream model server error" if isinstance(e, UpstreamError) else "model error"
            return _error(ex, 502, "upstream_error", msg, headers=ex.headers)
        texts: list[str] = []
        views: list[Any] = []
        masked: dict[str, int] = {}
        for text, view in zip(ans.texts, ans.views, strict=True):
            shown, spans, counts = policy.filter_text(text)
            texts.append(shown)
            for k, v in counts.items():
                masked[k] = masked.get(k, 0) + v
            v2 = None
            if req.logprobs and view is not None:
                v2 = policy.apply_tokens(view, TextAccess.LOGPROBS, spans, req.top_logprobs)
            views.append(v2)
        used = ans.prompt_tokens * (1 if req.echo else 0) + ans.completion_tokens
        charged = int(ex.x.shape[0])
        if ex.charged is not None and used < charged:
            try:
                await self.limiter.refund(ex.charged[0], ex.charged[1], charged - used)
            except Exception:  # the limiter is down: the tokens stay charged (fail closed)
                self.metrics.limiter_errors.inc()
        for k, v in masked.items():
            self.child(self.metrics.text_secrets_masked, role.name, k).inc(v)
        shown_lp = any(v is not None for v in views)
        if shown_lp:
            field = "logprobs" if policy.cap >= TextAccess.LOGPROBS else "top_logprobs"
            self.child(self.metrics.sensitive_fields, ex.route, role.name, field).inc()
        self.child(self.metrics.rows, role.name).inc(len(texts))
        rec.update(decision="served", rows=len(texts), tokens=used, masked=masked or None)
        doc = encode(req, ans, self.model_name, views=views, texts=texts)
        return Outcome(200, doc, rec, ex.headers)
