"""An OpenAI-compatible completion endpoint as a text target.

``OpenAITarget("http://127.0.0.1:8000", model="m", api="completions", access="logprobs")`` speaks
``/v1/completions`` (``logprobs``, ``echo``: scoring a text is a completion of ``max_tokens: 0`` with
``echo``) or ``/v1/chat/completions`` (``logprobs`` / ``top_logprobs``; chat cannot echo, so it
cannot score a given text). ``access`` says what the server offers: ``logprobs`` (every token's
log-probability and echo), ``topk_logprobs`` (top-k alternatives per position, up to
``max_top_logprobs``) or ``text``. The API key comes from the environment (``api_key_env``, sent as
``Authorization: Bearer``). Connections are pooled; ``429`` / ``502`` / ``503`` / ``504`` are retried
with backoff honouring ``Retry-After`` (capped); query and token budgets are checked before a request
is sent. A response that does not follow the format raises ``TargetError`` quoting the route, the
status and the start of the body.
"""

from __future__ import annotations

import json
import os
from typing import Any

from invguard.core.access import TextAccess
from invguard.core.errors import AccessError, ConfigError, TargetError
from invguard.targets.http import _BODY_PREVIEW
from invguard.targets.lm import BaseTextTarget, Generation, TokenLogprobs
from invguard.targets.transport import JsonEndpoint
from invguard.wire.openai import (
    CHAT,
    COMPLETIONS,
    MAX_PROMPTS,
    TextRequest,
    WireError,
    generations,
    parse_response,
    request_body,
)
from invguard.wire.urls import redact_url

APIS = {"completions": COMPLETIONS, "chat": CHAT}


class OpenAITarget(BaseTextTarget):
    """Query an OpenAI-compatible server (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api: str = "completions",
        access: TextAccess | str = TextAccess.LOGPROBS,
        budget: int | None = None,
        token_budget: int | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        max_top_logprobs: int = 20,
        batch_size: int = 32,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_retry_after: float = 30.0,
        pool_size: int = 4,
        name: str | None = None,
    ) -> None:
        if api not in APIS:
            raise ConfigError(f"openai target: api must be one of {sorted(APIS)}, got {api!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"openai target: base_url must start with http:// or https://, got {base_url!r}"
            )
        level = TextAccess.parse(access)
        if level >= TextAccess.WHITEBOX:
            raise ConfigError("openai target: an HTTP endpoint grants at most LOGPROBS access")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"openai target: timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"openai target: retries must be a whole number >= 0, got {retries!r}")
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[:-3]
        super().__init__(
            access=level,
            budget=budget,
            token_budget=token_budget,
            max_top_logprobs=max_top_logprobs,
            name=name or redact_url(root),
        )
        if api_key_env is not None:
            if api_key_env not in os.environ:
                raise ConfigError(
                    f"openai target: environment variable {api_key_env} (api_key_env) is not set"
                )
            api_key = os.environ[api_key_env]
        self.api = api
        self.route = APIS[api]
        self.url = root + self.route
        self._public_url = redact_url(self.url)
        self.model = model
        self.batch_size = max(1, min(int(batch_size), MAX_PROMPTS))
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._endpoint = JsonEndpoint(
            self.url,
            auth,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_retry_after=max_retry_after,
            retry_statuses=(429, 502, 503, 504),
            pool_size=pool_size,
        )

    def describe(self) -> str:
        return f"{self.access.name} (OpenAI-compatible {self.api} at {self._public_url})"

    def close(self) -> None:
        self._endpoint.close()

    # ------------------------------------------------------------------ transport
    def _post(self, body: dict[str, Any], expected: int) -> tuple[dict[str, Any], str]:
        route = self._endpoint.route
        status, data, _headers = self._endpoint.post(body)
        preview = data[:_BODY_PREVIEW].decode("utf-8", "replace")
        where = f"{route} -> {status} (body: {preview!r})"
        if status == 429:
            raise TargetError(f"{where}: still rate-limited after retries")
        if 300 <= status < 400:
            raise TargetError(f"{where}: the endpoint redirects; give the final URL")
        if status >= 400:
            raise TargetError(f"{where}: the endpoint answered with an error status")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise TargetError(f"{where}: response is not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise TargetError(f"{where}: response is not a JSON object")
        return doc, where

    def _request(self, req: TextRequest) -> list[tuple[str, TokenLogprobs | None, str]]:
        doc, where = self._post(request_body(req, self.model), req.choices)
        try:
            return parse_response(self.route, doc, req.choices, self.access)
        except WireError as e:
            raise TargetError(
                f"{where}: response does not follow the OpenAI {self.api} format ({e})"
            ) from None

    # ------------------------------------------------------------------ the target
    def _generate(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_logprobs: int,
        seed: int | None,
    ) -> list[Generation]:
        want_lp = self.access >= TextAccess.TOPK_LOGPROBS
        out: list[Generation] = []
        chunks = [prompts[i : i + self.batch_size] for i in range(0, len(prompts), self.batch_size)]
        if self.route == CHAT:
            chunks = [[p] for p in prompts]
        for j, chunk in enumerate(chunks):
            req = TextRequest(
                self.route,
                self.model,
                tuple(chunk),
                max_tokens,
                temperature,
                top_k,
                top_logprobs if want_lp else 0,
                want_lp,
                False,
                None if seed is None else int(seed) + j,
                1,
            )
            try:
                parsed = self._request(req)
            except TargetError:
                sent = sum(len(c) for c in chunks[: j + 1])
                self.refund(len(prompts) - sent, 0)
                raise
            out += generations(chunk, 1, parsed)
        if not want_lp:
            out = [Generation(g.prompt, g.text, None, g.finish_reason) for g in out]
        return out

    def _score(self, texts: list[str], top_logprobs: int) -> list[TokenLogprobs]:
        if self.route == CHAT:
            raise AccessError(
                "chat completions cannot echo a given text, so they cannot score it; use api='completions'"
            )
        out: list[TokenLogprobs] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            req = TextRequest(
                COMPLETIONS, self.model, tuple(chunk), 0, 1.0, 0, top_logprobs, True, True, None, 1
            )
            try:
                parsed = self._request(req)
            except TargetError:
                self.refund(len(texts) - i - len(chunk), 0)
                raise
            for _text, (_t, view, _f) in zip(chunk, parsed, strict=True):
                if view is None:
                    raise TargetError(f"POST {self._public_url}: an echo answer without logprobs")
                out.append(view)
        return out
