"""The guard in front of a language model: text policies on every route and error path."""

from __future__ import annotations

import json
import math
from contextlib import ExitStack

import pytest

from invguard.core import AccessError, TextAccess
from tests.guard.conftest import KEYS, base_config
from tests.guard.test_app import call
from tests.servers import free_port, serve

PIN = r"\d{6}"


@pytest.fixture(scope="module")
def upstream(micro_lm):
    from invguard.models.lm_server import openai_app
    from invguard.targets.hf_lm import HFLMTarget

    path, splits = micro_lm
    with serve(openai_app(HFLMTarget(path), model_name="micro")) as url:
        yield url, splits


def text_config(tmp, upstream_url, **over):
    cfg = base_config(tmp, **over)
    cfg["model"] = {
        "name": "micro",
        "kind": "openai",
        "upstream": {"url": upstream_url},
        "upstream_model": "micro",
    }
    rate = {"burst": 1000, "per_second": 1000}
    cfg["roles"] = {
        "internal": {"policy": "logprobs", "rate": rate},
        "partner": {
            "policy": {"top_logprobs": {"k": 5, "decimals": 2}, "secret_filter": {"patterns": {"pin": PIN}}},
            "rate": rate,
        },
        "default": {
            "policy": {"strip_logprobs": True, "secret_filter": {"patterns": {"pin": PIN}}},
            "rate": rate,
            "budget": {"day": 60},
        },
    }
    return cfg


@pytest.fixture()
def text_guard(tmp_path, upstream):
    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    with ExitStack() as stack:

        def start(**over):
            guard = Guard(from_dict(text_config(tmp_path, upstream[0], **over)))
            return stack.enter_context(serve(guard.app)), guard

        yield start


def records(guard):
    return [json.loads(x) for x in guard.audit.path.read_text().splitlines() if '"kind":"record"' in x]


def post(url, route, body, role):
    status, headers, raw = call(url, route, body, key=KEYS[role] if role else None)
    return status, headers, json.loads(raw)


def test_each_role_gets_exactly_its_text_policy_on_every_route(text_guard, upstream):
    url, guard = text_guard()
    _, splits = upstream
    canary = next(c for c in splits.canaries if c.insertions == 50)
    echo = {"model": "micro", "prompt": canary.text, "max_tokens": 0, "echo": True, "logprobs": 8}
    gen = {"model": "micro", "prompt": ["the pin of "] * 4, "max_tokens": 8, "logprobs": 8, "seed": 1}
    chat = {
        "model": "micro",
        "messages": [{"role": "user", "content": canary.prefix}],
        "max_tokens": 8,
        "logprobs": True,
        "top_logprobs": 8,
        "seed": 1,
    }
    seen = {}
    for role in ("internal", "partner", "default"):
        for name, route, body in (
            ("echo", "/v1/completions", echo),
            ("gen", "/v1/completions", gen),
            ("chat", "/v1/chat/completions", chat),
        ):
            status, _, doc = post(url, route, body, role)
            assert status == 200, (role, name, doc)
            seen[role, name] = doc
    # internal: every token's log-probability and 8 alternatives
    lp = seen["internal", "echo"]["choices"][0]["logprobs"]
    assert (
        all(v is not None for v in lp["token_logprobs"])
        and max(len(t or {}) for t in lp["top_logprobs"]) == 8
    )
    assert canary.secret in seen["internal", "echo"]["choices"][0]["text"]
    # partner: at most 5 alternatives, rounded to 2 decimals; a token's own value only if among them
    for name in ("echo", "gen"):
        for ch in seen["partner", name]["choices"]:
            assert (canary.secret not in ch["text"] and "[REDACTED]" in ch["text"]) or name == "gen"
            lpp = ch["logprobs"]
            for tok, v, alt in zip(lpp["tokens"], lpp["token_logprobs"], lpp["top_logprobs"], strict=True):
                alt = alt or {}
                assert len(alt) <= 5 and all(round(a, 2) == a for a in alt.values())
                assert v is None or (tok in alt and v == alt[tok])
    for item in seen["partner", "chat"]["choices"][0]["logprobs"]["content"]:
        assert len(item["top_logprobs"]) <= 5
    # default: no log-probabilities anywhere, secrets masked
    for name in ("echo", "gen", "chat"):
        for ch in seen["default", name]["choices"]:
            assert ch["logprobs"] is None
            body = ch.get("text") or ch["message"]["content"]
            assert not any(c.secret in body for c in splits.canaries)
    assert "[REDACTED]" in seen["default", "echo"]["choices"][0]["text"]
    # what was masked is counted (M4 for text) and audited as counts only, never in clear
    recs = [r for r in records(guard) if r["route"] == "/v1/completions" and r["role"] == "default"]
    assert recs[0]["masked"] == {"pin": 1} and recs[0]["decision"] == "served"
    log = guard.audit.path.read_text()
    assert canary.secret not in log
    status, _, metrics = call(url, "/metrics", method="GET")
    text = metrics.decode()
    assert 'invguard_guard_text_secrets_masked_total{pattern="pin",role="default"}' in text
    assert (
        'invguard_guard_sensitive_fields_total{field="top_logprobs",role="partner",route="/v1/completions"}'
        in text
    )


def test_error_paths_never_return_logprobs_or_secrets_and_are_audited(text_guard, tmp_path):
    url, guard = text_guard()
    cases = [
        ("/v1/completions", b"{not json", "partner", 400, "bad_json"),
        ("/v1/completions", {"prompt": 3}, "partner", 400, "bad_request"),
        ("/v1/completions", {"prompt": "a", "logprobs": 99}, "internal", 400, "bad_request"),
        ("/v1/completions", {"model": "other", "prompt": "a"}, "internal", 404, "unknown_model"),
        ("/v1/chat/completions", {"messages": []}, "default", 400, "bad_request"),
        ("/v1/completions", {"prompt": "a"}, None, 401, "unauthorized"),
        ("/v1/completions", {"prompt": ["a"] * 4, "max_tokens": 500}, "default", 400, "batch_exceeds_budget"),
    ]
    for route, body, role, status, code in cases:
        got, _, doc = post(url, route, body, role)
        assert (got, doc["code"]) == (status, code), (route, body, doc)
        assert "logprobs" not in json.dumps(doc) or code == "bad_request"
    status, _, doc = post(url, "/v1/completions", {"prompt": "a", "logprobs": 99}, "internal")
    assert "logprobs must be a whole number in [0, 20]" in doc["error"]
    # the token budget (60 a day for default): charged max_tokens up front, the unused part refunded;
    # refused with a 429 once fewer than max_tokens are left
    used = 0
    for _ in range(30):
        status, headers, doc = post(url, "/v1/completions", {"prompt": "x", "max_tokens": 20}, "default")
        if status != 200:
            break
        used += doc["usage"]["completion_tokens"]
    assert (
        status == 429 and doc["code"] == "budget_exhausted" and "retry-after" in {k.lower() for k in headers}
    )
    assert 40 < used <= 60
    routes = [r["route"] for r in records(guard)]
    assert routes.count("/v1/completions") >= 10 and routes.count("/v1/chat/completions") == 1
    assert post(url, "/v1/completions", {"prompt": "x"}, "internal")[0] == 200
    # GET on a text route: 405, audited
    status, _, _ = call(url, "/v1/completions", method="GET")
    assert status == 405


def test_upstream_failure_is_a_502_without_details(tmp_path, upstream):
    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    dead = f"http://user:pw@127.0.0.1:{free_port()}"
    guard = Guard(from_dict(text_config(tmp_path, dead)))
    with serve(guard.app) as url:
        status, _, doc = post(url, "/v1/completions", {"prompt": "a", "logprobs": 2}, "internal")
    assert status == 502 and doc == {"code": "upstream_error", "error": "upstream model server error"}
    rec = records(guard)[-1]
    assert rec["decision"] == "upstream_error" and "pw" not in rec["error"]


def test_attacks_through_the_guard_get_only_what_the_role_allows(text_guard, upstream):
    from invguard.attacks import get
    from invguard.targets.openai import OpenAITarget

    url, _ = text_guard()
    _, splits = upstream
    partner = OpenAITarget(
        url, model="micro", access="topk_logprobs", api_key=KEYS["partner"], max_top_logprobs=5
    )
    (s,) = partner.score([splits.canaries[-1].text], top_logprobs=5)
    assert not s.exact() or all(len(t) <= 5 for t in s.top)
    default = OpenAITarget(url, model="micro", access="text", api_key=KEYS["default"])
    assert default.access == TextAccess.TEXT
    with pytest.raises(AccessError, match=r"text.exposure needs TOPK_LOGPROBS; this target grants TEXT"):
        get("text.exposure")(samples=0).run(default, splits)
    assert default.queries_used == 0
    assert not math.isnan(s.total())
