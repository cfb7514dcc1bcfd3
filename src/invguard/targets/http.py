"""A live HTTP endpoint as a target.

Presets:

- ``kserve-v2``: the KServe / Triton "Open Inference Protocol" (v2). Request
  ``{"inputs": [{"name", "shape", "datatype": "FP32", "data"}]}``, response
  ``{"outputs": [{"name", "shape", "datatype", "data"}]}`` (row-major flat ``data``).
- ``instances``: ``{"instances": [...]}`` -> ``{"predictions": [...]}`` (TF-Serving / KServe v1 style).
- ``invguard``: the guard's own API, ``{"inputs": [...]}`` -> ``{"labels", "scores"?, "logits"?}``.
- ``custom``: ``request_template`` (JSON with the string ``"$inputs"`` where the batch goes) and
  ``response_field`` (dotted path, list indices allowed: ``"result.0.probs"``).

``returns`` says what the endpoint answers (``labels``, ``scores`` or ``logits``) and so the access
the target grants. Connections are pooled (urllib3); timeouts and retries with exponential backoff
are honoured; every row counts as a query against the budget, checked before the request is sent.
A response that is not a valid prediction raises ``TargetError`` quoting the route, the status and
the first bytes of the body.

A ``429`` is a rate limit or a spent quota. One whose ``Retry-After`` is at most ``max_wait``
seconds is waited out (``retries`` times); one that asks for longer (a daily quota), or whose body
says the budget or quota is exhausted, raises :class:`BudgetExhausted` at once, so an attack stops
instead of retrying a quota that will not return today. Rows the server refused are not counted
as queries (they were not answered).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from invguard.core.errors import BudgetExhausted, ConfigError, TargetError
from invguard.core.target import BaseTarget, Prediction
from invguard.targets.callable import _KINDS, prediction_from_output
from invguard.targets.registry import TARGETS
from invguard.targets.transport import JsonEndpoint
from invguard.wire import instances, kserve
from invguard.wire.urls import redact_url

PRESETS = ("kserve-v2", "instances", "invguard", "custom")
_BODY_PREVIEW = 200


def _dig(doc: Any, path: str) -> Any:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, list) and part.lstrip("-").isdigit():
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise KeyError(part)
    return cur


def _fill(template: Any, inputs: list[Any]) -> Any:
    if template == "$inputs":
        return inputs
    if isinstance(template, dict):
        return {k: _fill(v, inputs) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, inputs) for v in template]
    return template


_SPENT_CODES = ("budget_exhausted", "quota_exceeded", "insufficient_quota", "quota_exhausted")


def says_exhausted(body: bytes) -> bool:
    """Whether a 429's body says a budget or quota is spent (not merely a request rate)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        codes = [doc.get("code"), err.get("code") if isinstance(err, dict) else None]
        if any(isinstance(c, str) and c.lower() in _SPENT_CODES for c in codes):
            return True
    text = body[:2000].decode("utf-8", "replace").lower()
    return any(w in text for w in ("budget", "quota")) and any(
        w in text for w in ("exhausted", "exceeded", "spent", "used up")
    )


@TARGETS.register("http")
class HttpTarget(BaseTarget):
    """Query a model served over HTTP. See the module docstring for presets."""

    def __init__(
        self,
        url: str,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        preset: str = "kserve-v2",
        returns: str = "scores",
        budget: int | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        api_key_header: str = "X-API-Key",
        headers: dict[str, str] | None = None,
        input_name: str = "input",
        output_name: str | None = None,
        request_template: Any = None,
        response_field: str | None = None,
        batch_size: int = 64,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_retry_after: float = 30.0,
        max_wait: float = 60.0,
        pool_size: int = 4,
        name: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"http target: unknown preset {preset!r}; expected one of {list(PRESETS)}")
        if returns not in _KINDS:
            raise ConfigError(f"http target: returns must be one of {sorted(_KINDS)}, got {returns!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"http target: url must start with http:// or https://, got {url!r}")
        if preset == "custom" and (request_template is None or response_field is None):
            raise ConfigError("http target: the custom preset needs request_template and response_field")
        if preset == "custom" and "$inputs" not in json.dumps(request_template):
            raise ConfigError(
                'http target: request_template must contain the string "$inputs" where the batch goes'
            )
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"http target: timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"http target: retries must be a whole number >= 0, got {retries!r}")
        if not (isinstance(max_wait, (int, float)) and max_wait >= 0):
            raise ConfigError(f"http target: max_wait must be a number of seconds >= 0, got {max_wait!r}")
        super().__init__(
            num_classes=num_classes,
            input_shape=input_shape,
            access=_KINDS[returns],
            budget=budget,
            name=name or url,
        )
        if api_key_env is not None:
            if api_key_env not in os.environ:
                raise ConfigError(f"http target: environment variable {api_key_env} (api_key_env) is not set")
            api_key = os.environ[api_key_env]
        self.url = url
        self._public_url = redact_url(url)
        self.preset = preset
        self.returns = returns
        self.input_name = input_name
        self.output_name = output_name
        self.request_template = request_template
        self.response_field = response_field
        self.batch_size = max(1, int(batch_size))
        sent = dict(headers or {})
        if api_key:
            sent[api_key_header] = api_key
        # 429 is not retried here: _predict_chunk tells a spent quota from a short rate limit
        self._endpoint = JsonEndpoint(
            url,
            sent,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_retry_after=max_retry_after,
            retry_statuses=(502, 503, 504),
            pool_size=pool_size,
        )
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self._sleep = sleep

    def describe(self) -> str:
        return f"{self.access.name} (HTTP {self.preset} at {self._public_url})"

    def close(self) -> None:
        self._endpoint.close()

    # ------------------------------------------------------------------ request / response shapes
    def _body(self, x: np.ndarray) -> dict[str, Any]:
        if self.preset == "kserve-v2":
            return kserve.request(x, self.input_name)
        if self.preset == "instances":
            return instances.request(x)
        rows = x.tolist()
        if self.preset == "invguard":
            return {"inputs": rows}
        body: dict[str, Any] = _fill(self.request_template, rows)
        return body

    def _extract(self, doc: Any, n: int) -> Any:
        if self.preset == "kserve-v2":
            return kserve.pick_output(doc, n, self.num_classes, self.returns, self.output_name)
        if self.preset == "instances":
            return instances.predictions(doc)
        if self.preset == "invguard":
            return doc[self.returns]
        assert self.response_field is not None
        return _dig(doc, self.response_field)

    # ------------------------------------------------------------------ transport
    def _post(self, body: dict[str, Any]) -> tuple[int, bytes, Any]:
        return self._endpoint.post(body)

    def _predict(self, x: np.ndarray) -> Prediction:
        preds: list[Prediction] = []
        for i in range(0, x.shape[0], self.batch_size):
            try:
                preds.append(self._predict_chunk(x[i : i + self.batch_size]))
            except BudgetExhausted:
                self.refund(x.shape[0] - i)  # the refused chunk and those never sent were not answered
                raise
            except TargetError:
                self.refund(max(0, x.shape[0] - i - self.batch_size))  # chunks never sent are not spent
                raise
        if len(preds) == 1:
            return preds[0]
        return Prediction(
            labels=np.concatenate([p.labels for p in preds]),
            scores=None if preds[0].scores is None else np.concatenate([p.scores for p in preds]),
            logits=None if preds[0].logits is None else np.concatenate([p.logits for p in preds]),
            access=preds[0].access,
        )

    @staticmethod
    def _retry_after(headers: Any) -> float | None:
        """Retry-After in seconds: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3), uncapped."""
        value = headers.get("Retry-After")
        if value is None:
            return None
        value = str(value).strip()
        if value.isdigit():
            return float(value)
        import email.utils

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

    def _predict_chunk(self, x: np.ndarray) -> Prediction:
        body = self._body(x)
        route = f"POST {self._public_url}"
        for attempt in range(self.retries + 1):
            status, data, headers = self._post(body)
            if status != 429:
                break
            wait = self._retry_after(headers)
            preview = data[:_BODY_PREVIEW].decode("utf-8", "replace")
            spent = says_exhausted(data)
            if spent or (wait is not None and wait > self.max_wait):
                why = (
                    "the server says the query budget is exhausted"
                    if spent
                    else f"Retry-After {wait:g} s is beyond max_wait {self.max_wait:g} s"
                )
                raise BudgetExhausted(
                    f"{route} -> 429 (body: {preview!r}): {why}; the attack stops here",
                    used=self.queries_used - x.shape[0],
                    budget=self.budget or 0,
                    requested=int(x.shape[0]),
                )
            if attempt == self.retries:
                raise TargetError(f"{route} -> 429 (body: {preview!r}): still rate-limited after retries")
            self._sleep(wait if wait is not None else self.backoff * 2**attempt)
        preview = data[:_BODY_PREVIEW].decode("utf-8", "replace")
        where = f"{route} -> {status} (body: {preview!r})"
        if 300 <= status < 400:
            raise TargetError(
                f"{where}: the endpoint redirects (to {headers.get('Location', '?')}); give the final URL"
            )
        if status >= 400:
            raise TargetError(f"{where}: the endpoint answered with an error status")
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise TargetError(f"{where}: response is not valid JSON ({e})") from None
        try:
            raw = self._extract(doc, x.shape[0])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise TargetError(
                f"{where}: response does not match the {self.preset!r} preset (missing or bad field {e})"
            ) from None
        return prediction_from_output(raw, self.returns, x.shape[0], self.num_classes, where)
