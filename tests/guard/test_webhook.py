"""Webhook delivery: CloudEvents, an HMAC signature the receiver checks, retries with backoff."""

from __future__ import annotations

import asyncio
import json

import pytest

from invguard.guard.incidents import IncidentStore
from invguard.guard.webhook import SignatureError, WebhookDispatcher, verify_signature
from tests.guard.test_incidents import Clock, probe

SECRET = b"whsec-test-0123456789"


class Receiver:
    """A transport that records what it is sent and answers from a script of statuses/errors."""

    def __init__(self, script):
        self.script = list(script)
        self.got: list[tuple[str, dict, bytes]] = []

    async def __call__(self, url, headers, body, timeout):
        self.got.append((url, dict(headers), body))
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, Exception):
            raise step
        return step


def run(coro):
    return asyncio.run(coro)


def test_events_are_signed_cloudevents_and_retried_with_backoff(tmp_path):
    clock = Clock()
    store = IncidentStore(tmp_path / "i.db", clock=clock)
    rx = Receiver([ConnectionRefusedError("refused"), 503, 200])
    d = WebhookDispatcher(store, "https://siem.example/hook", SECRET, transport=rx, clock=clock, backoff=2.0)
    inc, _ = store.open(probe())
    t0 = clock.t
    assert run(d.run_once()) == 0  # refused: retry in 2 s
    (ob,) = store.outbox()
    assert ob["attempts"] == 1 and ob["next_attempt_at"] == t0 + 2 and ob["error"].startswith("Connection")
    assert run(d.run_once()) == 0 and len(rx.got) == 1  # not due yet: nothing sent
    clock.t = t0 + 2
    assert run(d.run_once()) == 0  # 503: retry 4 s later
    assert store.outbox()[0]["next_attempt_at"] == t0 + 6 and store.outbox()[0]["error"] == "HTTP 503"
    clock.t = t0 + 6
    assert run(d.run_once()) == 1
    ob = store.outbox()[0]
    assert ob["delivered_at"] == t0 + 6 and ob["attempts"] == 3
    assert run(d.run_once()) == 0 and len(rx.got) == 3  # delivered once, never again

    url, headers, body = rx.got[-1]
    assert url == "https://siem.example/hook" and headers["content-type"] == "application/cloudevents+json"
    verify_signature(SECRET, headers, body, now=clock.t)  # the receiver's check passes
    ev = json.loads(body)
    assert ev["specversion"] == "1.0" and ev["type"] == "dev.invguard.incident.opened"
    assert ev["source"] == "/invguard/guard/digits" and ev["subject"] == f"incident/{inc.id}"
    assert ev["id"] == headers["webhook-id"] == rx.got[0][1]["webhook-id"]  # same id on every retry
    assert ev["data"]["clients"] == ["acme"] and ev["data"]["model_version"] == "v1"

    from cloudevents.core.bindings.http import HTTPMessage, from_structured_event

    parsed = from_structured_event(HTTPMessage(headers=headers, body=body))
    assert parsed.get_type() == "dev.invguard.incident.opened"

    # the transitions follow as their own events
    store.acknowledge(inc.id, "alice", "on it")
    store.resolve(inc.id, "alice", "key revoked")
    assert run(d.run_once()) == 2
    types = [json.loads(b)["type"] for _, _, b in rx.got[-2:]]
    assert types == ["dev.invguard.incident.acknowledged", "dev.invguard.incident.resolved"]
    assert json.loads(rx.got[-1][2])["data"]["transition"]["note"] == "key revoked"


def test_receiver_refuses_forged_tampered_and_replayed_deliveries(tmp_path):
    clock = Clock()
    store = IncidentStore(tmp_path / "i.db", clock=clock)
    rx = Receiver([])
    run(WebhookDispatcher(store, "http://x/", SECRET, transport=rx, clock=clock).run_once())
    store.open(probe())
    run(WebhookDispatcher(store, "http://x/", SECRET, transport=rx, clock=clock).run_once())
    _, headers, body = rx.got[0]
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify_signature(b"another secret", headers, body, now=clock.t)
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify_signature(SECRET, headers, body.replace(b"acme", b"acmf"), now=clock.t)
    with pytest.raises(SignatureError, match=r"more than 300 s from now \(a replay\?\)"):
        verify_signature(SECRET, headers, body, now=clock.t + 301)
    with pytest.raises(SignatureError, match="missing webhook-id"):
        verify_signature(SECRET, {"webhook-id": "x"}, body, now=clock.t)


def test_gives_up_after_max_attempts_with_capped_backoff(tmp_path):
    clock = Clock()
    store = IncidentStore(tmp_path / "i.db", clock=clock)
    rx = Receiver([500] * 10)
    d = WebhookDispatcher(
        store, "http://x/", SECRET, transport=rx, clock=clock, max_attempts=4, backoff=1, max_backoff=3
    )
    store.open(probe())
    t0, delays = clock.t, []
    for _ in range(4):
        run(d.run_once())
        ob = store.outbox()[0]
        if ob["failed_at"] is None:
            delays.append(ob["next_attempt_at"] - clock.t)
            clock.t = ob["next_attempt_at"]
    assert delays == [1, 2, 3]
    ob = store.outbox()[0]
    assert ob["attempts"] == 4 and ob["failed_at"] == t0 + 6 and ob["delivered_at"] is None
    run(d.run_once())
    assert len(rx.got) == 4


def test_two_dispatchers_never_post_one_event_twice(tmp_path):
    clock = Clock()
    store = IncidentStore(tmp_path / "i.db", clock=clock)
    rx = Receiver([])
    store.open(probe())
    store.open(probe("zeta"))
    a = WebhookDispatcher(store, "http://x/", SECRET, transport=rx, clock=clock)
    b = WebhookDispatcher(store, "http://x/", SECRET, transport=rx, clock=clock)

    async def both():
        return await asyncio.gather(a.run_once(), b.run_once())

    assert sum(run(both())) == 2
    assert sorted(h["webhook-id"] for _, h, _ in rx.got) == ["incident-1-1", "incident-2-2"]


def test_real_http_receiver_checks_the_signature(tmp_path):
    """End to end over loopback: the default aiohttp transport posting to a Starlette receiver."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from tests.servers import serve

    seen = []
    clock = Clock()

    async def hook(request):
        body = await request.body()
        try:
            verify_signature(SECRET, dict(request.headers), body, now=clock.t)
        except SignatureError:
            return Response(status_code=401)
        seen.append(json.loads(body)["type"])
        return Response(status_code=204)

    store = IncidentStore(tmp_path / "i.db", clock=clock)
    store.open(probe())
    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:

        async def go():
            good = WebhookDispatcher(store, url + "/hook", SECRET, clock=clock)
            bad = WebhookDispatcher(store, url + "/hook", b"wrong", clock=clock)
            try:
                n_bad = await bad.run_once()
            finally:
                await bad.close()
            clock.t += 10
            try:
                n_good = await good.run_once()
            finally:
                await good.close()
            return n_bad, n_good

        assert run(go()) == (0, 1)
    assert seen == ["dev.invguard.incident.opened"]
    assert store.outbox()[0]["attempts"] == 2
