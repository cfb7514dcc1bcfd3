"""One JSON-over-HTTP transport for the targets that query a served model (``http``, ``openai``).

A pooled ``urllib3`` client that POSTs JSON with a bounded retry policy (connection errors and the
statuses it is told to retry, backing off exponentially, honouring ``Retry-After`` up to a cap),
never follows a redirect (following one would hand the API key to another host), and turns every
transport failure into a ``TargetError`` naming the route with the URL's secrets redacted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import urllib3

from invguard.core.errors import TargetError
from invguard.wire.urls import redact_text, redact_url


class CappedRetry(urllib3.Retry):
    """urllib3's retry policy, with the server's ``Retry-After`` capped at ``max_retry_after`` seconds
    and (with ``retry_429=False``) never retrying a 429: a caller that tells a spent quota from a
    short rate limit handles 429 itself (urllib3 would retry any 429 carrying Retry-After)."""

    max_retry_after: float = 30.0
    retry_429: bool = True

    def new(self, **kw: Any) -> CappedRetry:
        r: CappedRetry = super().new(**kw)
        r.max_retry_after = self.max_retry_after
        r.retry_429 = self.retry_429
        return r

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.max_retry_after)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429 and not self.retry_429:
            return False
        return bool(super().is_retry(method, status_code, has_retry_after))


class JsonEndpoint:
    """POST JSON to ``url`` with ``headers`` through a pool of ``pool_size`` connections; ``retries``
    attempts for connection errors and for ``retry_statuses`` (backing off by ``backoff`` seconds,
    doubling), ``timeout`` seconds to read an answer (at most 5 to connect)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        retries: int,
        backoff: float,
        max_retry_after: float,
        retry_statuses: tuple[int, ...],
        pool_size: int,
    ) -> None:
        self.url = url
        self.public_url = redact_url(url)
        self.route = f"POST {self.public_url}"
        self.headers = {"Content-Type": "application/json", **dict(headers)}
        self.retry = CappedRetry(
            total=int(retries),
            connect=int(retries),
            read=0,
            status=int(retries),
            backoff_factor=float(backoff),
            status_forcelist=retry_statuses,
            allowed_methods=frozenset({"POST"}),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        self.retry.max_retry_after = float(max_retry_after)
        self.retry.retry_429 = 429 in retry_statuses
        self.timeout = urllib3.Timeout(connect=min(timeout, 5.0), read=timeout)
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=int(pool_size), retries=self.retry, timeout=self.timeout
        )

    def post(self, body: Any) -> tuple[int, bytes, Any]:
        """The answer's status, body and headers; a transport failure is a ``TargetError``."""
        try:
            resp = self._pool.request(
                "POST",
                self.url,
                body=json.dumps(body).encode(),
                headers=self.headers,
                retries=self.retry.new(),
                preload_content=True,
                redirect=False,
            )
        except urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, urllib3.exceptions.ReadTimeoutError):
                raise TargetError(self._say("no answer within the read timeout", e.reason)) from None
            raise TargetError(self._say("cannot reach the endpoint after retries", e.reason)) from None
        except urllib3.exceptions.ReadTimeoutError as e:
            raise TargetError(self._say("no answer within the read timeout", e)) from None
        except urllib3.exceptions.HTTPError as e:
            raise TargetError(self._say("request failed", e)) from None
        return resp.status, resp.data, resp.headers

    def _say(self, what: str, cause: object) -> str:
        # urllib3's texts can carry the full URL (its query string, its userinfo): redacted
        return f"{self.route}: {what} ({redact_text(str(cause), self.url)})"

    def close(self) -> None:
        self._pool.clear()
