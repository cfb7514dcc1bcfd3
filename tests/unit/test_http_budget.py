"""HttpTarget and a 429: a short Retry-After is waited out (with an injected sleep), a long one or a
spent quota stops at once with BudgetExhausted, and refused rows are not counted as queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from invguard.core.errors import BudgetExhausted, TargetError
from invguard.targets import HttpTarget
from tests.servers import serve


def _app(answers: list[tuple[int, dict, dict]]):
    """Answers in order (status, headers, body); after the list, a valid prediction."""
    seen: list[int] = []

    async def predict(request):
        rows = json.loads(await request.body())["inputs"]
        seen.append(len(rows))
        if len(seen) <= len(answers):
            status, headers, body = answers[len(seen) - 1]
            return Response(
                json.dumps(body), status_code=status, headers=headers, media_type="application/json"
            )
        scores = np.full((len(rows), 3), 1 / 3).tolist()
        return Response(
            json.dumps({"labels": [0] * len(rows), "scores": scores}), media_type="application/json"
        )

    return Starlette(routes=[Route("/v1/models/m/predict", predict, methods=["POST"])]), seen


def _target(url, sleeps, **kw):
    return HttpTarget(
        f"{url}/v1/models/m/predict",
        preset="invguard",
        input_shape=(4,),
        num_classes=3,
        retries=2,
        sleep=sleeps.append,
        **kw,
    )


RATE = {"code": "rate_limited", "error": "rate limit exceeded"}
X = np.zeros((5, 4), dtype=np.float32)


def test_a_retry_after_beyond_max_wait_stops_at_once_and_spends_nothing():
    app, seen = _app([(429, {"Retry-After": "43200"}, RATE)])
    sleeps: list[float] = []
    with serve(app) as url:
        t = _target(url, sleeps, budget=100)
        with pytest.raises(
            BudgetExhausted, match=r"Retry-After 43200 s is beyond max_wait 60 s; the attack stops"
        ):
            t.predict(X)
    assert sleeps == [] and seen == [5] and t.queries_used == 0


def test_a_429_that_says_the_budget_is_exhausted_stops_even_with_a_short_retry_after():
    body = {"code": "budget_exhausted", "error": "query budget exhausted for this period"}
    app, _ = _app([(429, {"Retry-After": "1"}, body)])
    sleeps: list[float] = []
    with serve(app) as url:
        t = _target(url, sleeps)
        with pytest.raises(BudgetExhausted, match="the server says the query budget is exhausted"):
            t.predict(X)
    assert sleeps == [] and t.queries_used == 0


def test_a_short_retry_after_is_waited_out_and_the_answer_counts_once():
    app, seen = _app([(429, {"Retry-After": "2"}, RATE), (429, {"Retry-After": "2"}, RATE)])
    sleeps: list[float] = []
    with serve(app) as url:
        t = _target(url, sleeps)
        pred = t.predict(X)
    assert sleeps == [2.0, 2.0] and seen == [5, 5, 5]
    assert pred.labels.tolist() == [0] * 5 and t.queries_used == 5


def test_rate_limited_past_the_retries_is_a_target_error():
    app, _ = _app([(429, {"Retry-After": "1"}, RATE)] * 3)
    sleeps: list[float] = []
    with serve(app) as url:
        t = _target(url, sleeps)
        with pytest.raises(TargetError, match="still rate-limited after retries"):
            t.predict(X)
    assert sleeps == [1.0, 1.0]


def test_max_wait_is_configurable():
    app, _ = _app([(429, {"Retry-After": "90"}, RATE)])
    sleeps: list[float] = []
    with serve(app) as url:
        t = _target(url, sleeps, max_wait=120)
        t.predict(X)
    assert sleeps == [90.0]


def test_a_transport_failure_names_the_route_with_the_urls_secrets_redacted():
    """urllib3's own error text carries the full URL (query string, userinfo): never the token."""
    from invguard.core.errors import TargetError
    from invguard.targets.transport import JsonEndpoint
    from tests.servers import free_port

    url = f"http://user:pw-secret@127.0.0.1:{free_port()}/v2/models/m/infer?token=tok-secret"
    ep = JsonEndpoint(
        url, {}, timeout=1.0, retries=0, backoff=0.0, max_retry_after=1.0, retry_statuses=(), pool_size=1
    )
    with pytest.raises(TargetError) as e:
        ep.post({"x": 1})
    msg = str(e.value)
    assert msg.startswith("POST http://***@127.0.0.1:") and "cannot reach the endpoint after retries" in msg
    assert "tok-secret" not in msg and "pw-secret" not in msg
