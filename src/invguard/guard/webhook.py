"""Post incidents to a webhook (a SIEM, a pager) as signed CloudEvents, retried, off the request path.

Each new incident and each transition (acknowledged, resolved, mitigation) is one CloudEvents 1.0
event in structured JSON mode (``Content-Type: application/cloudevents+json``, built with the
``cloudevents`` package): ``type`` ``dev.invguard.incident.<action>``, ``source``
``/invguard/guard/<model>``, ``subject`` ``incident/<id>``, ``id`` ``incident-<id>-<transition>``
(the same on every retry, so a receiver de-duplicates), ``time`` of the transition, and the
incident as ``data``.

**Signature** (the Standard Webhooks scheme): headers ``webhook-id`` (the event id),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature: v1,<base64>`` where
the signature is ``HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")`` (RFC 2104). A receiver checks
it with :func:`verify_signature` (constant-time comparison, and a timestamp tolerance against
replays).

**Delivery**: the events wait in the incident store's outbox (written in the same transaction as
the change); :meth:`WebhookDispatcher.run_once` takes the due ones (with a lease, so several
workers never post one event twice at once), posts each, and on a failure (a connection error, a
timeout, a non-2xx answer) schedules the next attempt after ``backoff * 2**(attempts-1)`` seconds,
capped at ``max_backoff``, until ``max_attempts``. The guard runs it in a background task: a
request never waits for a webhook. Clock and transport are injected (tests need neither sleeps nor
a network).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError
from invguard.guard.incidents import Clock, IncidentStore, OutboxItem, WebhookConfig, iso

log = logging.getLogger("invguard.guard.webhook")

# transport(url, headers, body, timeout) -> HTTP status (raises on a connection error or timeout)
Transport = Callable[[str, dict[str, str], bytes, float], Awaitable[int]]


class SignatureError(Exception):
    """A webhook delivery whose signature does not verify (the message says why)."""


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_signature(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: float = 300.0
) -> None:
    """Check a delivery as a receiver would; raises :class:`SignatureError` naming the problem."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not ts.isdigit():
        raise SignatureError(f"webhook-timestamp {ts!r} is not Unix seconds")
    if abs(now - int(ts)) > tolerance:
        raise SignatureError(f"webhook-timestamp {ts} is more than {tolerance:.0f} s from now (a replay?)")
    expected = sign(secret, msg_id, int(ts), body)
    if not any(hmac.compare_digest(expected, s) for s in sigs.split()):
        raise SignatureError("no webhook-signature matches the body under the shared secret")


def event_for(item: OutboxItem, source_prefix: str = "/invguard/guard") -> Any:
    """The CloudEvent for one outbox item."""
    from datetime import UTC, datetime

    from cloudevents.core.v1.event import CloudEvent

    inc, t = item.incident, item.transition
    data = inc.to_dict()
    data["transition"] = t.to_dict()
    return CloudEvent(
        attributes={
            "id": f"incident-{inc.id}-{t.id}",
            "source": f"{source_prefix}/{inc.model}",
            "type": f"dev.invguard.incident.{t.action}",
            "subject": f"incident/{inc.id}",
            "time": datetime.fromtimestamp(t.at, UTC),
            "datacontenttype": "application/json",
        },
        data=data,
    )


def encode(event: Any) -> tuple[dict[str, str], bytes]:
    from cloudevents.core.bindings.http import to_structured_event

    msg = to_structured_event(event)
    return dict(msg.headers), msg.body


def load_secret(cfg: WebhookConfig, base: Path | None = None) -> bytes:
    """The HMAC secret of a webhook config (from ``secret_env`` or ``secret_file``)."""
    if cfg.secret_env:
        v = os.environ.get(cfg.secret_env)
        if not v:
            raise ConfigError(
                f"incidents.webhook.secret_env: environment variable {cfg.secret_env} is not set"
            )
        return v.encode()
    if cfg.secret_file:
        p = Path(cfg.secret_file)
        if base is not None and not p.is_absolute():
            p = base / p
        try:
            v = p.read_text().strip()
        except OSError as e:
            raise ConfigError(f"incidents.webhook.secret_file: cannot read {p} ({e.strerror})") from None
        if not v:
            raise ConfigError(f"incidents.webhook.secret_file: {p} is empty")
        return v.encode()
    raise ConfigError("incidents.webhook: set secret_env or secret_file (deliveries are always signed)")


def aiohttp_transport() -> tuple[Transport, Callable[[], Awaitable[None]]]:
    """A transport on one pooled aiohttp session, and the coroutine that closes it."""
    import aiohttp

    session: list[aiohttp.ClientSession] = []

    async def post(url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        if not session:
            session.append(aiohttp.ClientSession())
        async with session[0].post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as r:
            await r.read()
            return r.status

    async def close() -> None:
        if session:
            await session.pop().close()

    return post, close


class WebhookDispatcher:
    """Delivers the store's outbox to one URL."""

    def __init__(
        self,
        store: IncidentStore,
        url: str,
        secret: bytes,
        *,
        transport: Transport | None = None,
        clock: Clock = time.time,
        max_attempts: int = 8,
        backoff: float = 2.0,
        max_backoff: float = 600.0,
        timeout: float = 5.0,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.store, self.url, self.secret = store, url, secret
        self.clock = clock
        self.max_attempts, self.backoff, self.max_backoff, self.timeout = (
            max_attempts,
            backoff,
            max_backoff,
            timeout,
        )
        self._close: Callable[[], Awaitable[None]] | None = None
        if transport is None:
            transport, self._close = aiohttp_transport()
        self.transport = transport
        self.on_result = on_result or (lambda outcome: None)

    @classmethod
    def from_config(cls, store: IncidentStore, cfg: WebhookConfig, **kw: Any) -> WebhookDispatcher:
        return cls(
            store,
            cfg.url,
            load_secret(cfg),
            max_attempts=cfg.max_attempts,
            backoff=cfg.backoff_seconds,
            max_backoff=cfg.max_backoff_seconds,
            timeout=cfg.timeout_seconds,
            **kw,
        )

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempts - 1)))

    async def run_once(self) -> int:
        """Post every due event once; returns how many were delivered."""
        now = self.clock()
        items = await asyncio.to_thread(self.store.claim_outbox, now, self.timeout * 2 + 1)
        done = 0
        for item in items:
            headers, body = encode(event_for(item))
            msg_id = f"incident-{item.incident.id}-{item.transition.id}"
            ts = int(self.clock())
            headers.update(
                {
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(ts),
                    "webhook-signature": sign(self.secret, msg_id, ts, body),
                    "user-agent": "invguard-webhook",
                }
            )
            error: str | None = None
            try:
                status = await self.transport(self.url, headers, body, self.timeout)
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except Exception as e:  # any failure to deliver is retried
                error = f"{type(e).__name__}: {e}"[:300] or type(e).__name__
            at = self.clock()
            if error is None:
                await asyncio.to_thread(self.store.delivered, item.id, at)
                self.on_result("delivered")
                done += 1
                continue
            attempts = item.attempts + 1
            retry = None if attempts >= self.max_attempts else at + self.delay(attempts)
            await asyncio.to_thread(self.store.delivery_failed, item.id, at, error, retry)
            self.on_result("retry" if retry is not None else "gave_up")
            log.warning(
                "webhook delivery of %s failed (%s); %s",
                msg_id,
                error,
                f"retry at {iso(retry)}" if retry is not None else f"gave up after {attempts} attempts",
            )
        return done

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Deliver until ``stop`` is set (the guard's background task)."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as e:  # the store is busy or broken: try again next tick
                log.warning("webhook dispatcher: %s: %s", type(e).__name__, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
