"""Text attacks on the tiny reference LM, and the OpenAI-compatible target against a real server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from invguard.attacks import get
from invguard.core import BudgetExhausted, TargetError, TextAccess
from tests.servers import serve


@pytest.fixture(scope="module")
def lm(micro_lm):
    from invguard.targets.hf_lm import HFLMTarget

    path, splits = micro_lm
    return HFLMTarget(path), splits


def test_membership_bands_on_the_tiny_lm(lm):
    target, splits = lm
    res = {s: get("text.membership")(statistic=s, n_boot=200).run(target, splits) for s in ("loss", "min_k")}
    for s, r in res.items():
        auc = r.metric("auc")
        assert auc.low > 0.75, (s, auc)  # 40 members, 20 non-members: measured 0.95 (loss), 0.93 (min_k)
    assert res["loss"].info["statistic"] == "loss" and res["loss"].queries_used == 80


def test_extraction_finds_a_canary_inserted_many_times_and_not_one_never_inserted(lm):
    target, splits = lm
    r = get("text.extraction")(
        samples=48, max_tokens=10, top=10, prompts=("format",), rankings=("perplexity", "frequency")
    ).run(target, splits, seed=0)
    fifty = [c for c in splits.canaries if c.insertions == 50]
    rows = r.tables["extracted"]
    found = {row["canary"] for row in rows if row["canary"]}
    assert found & {c.name for c in fifty}  # a canary inserted 50 times comes out
    assert r.metric("never_inserted_recovered_perplexity").value == 0.0
    assert r.metric("never_inserted_recovered_frequency").value == 0.0
    assert r.metric("canaries_recovered").value > 0
    # redacted by default: no secret in the results JSON
    blob = json.dumps(r.to_json())
    assert all(c.secret not in blob for c in splits.canaries)
    assert "redacted" in rows[0]["text"]


def test_local_target_scores_generates_seeded_and_gives_gradients(lm):
    target, splits = lm
    c = splits.canaries[-1]
    (s,) = target.score([c.text], top_logprobs=3)
    assert s.tokens[-6:] == tuple(c.secret) and s.exact()
    assert all(len(t) == 3 for t in s.top)
    a = target.generate(["the pin of "] * 3, max_tokens=6, seed=5)
    b = target.generate(["the pin of "] * 3, max_tokens=6, seed=5)
    assert [g.text for g in a] == [g.text for g in b]
    toks, grad = target.token_gradients(c.text)
    assert grad.shape[0] == len(toks) and np.isfinite(grad).all() and np.abs(grad).sum() > 0


# ---------------------------------------------------------------------- the OpenAI-compatible target


def test_openai_target_against_a_real_local_server_matches_the_local_model(lm):
    from invguard.models.lm_server import openai_app
    from invguard.targets.openai import OpenAITarget

    target, splits = lm
    texts = [splits.canaries[-1].text, splits.members[0][:200]]
    with serve(openai_app(target, model_name="micro")) as url:
        remote = OpenAITarget(url, model="micro", access="logprobs", budget=6)
        got = remote.score(texts, top_logprobs=2)
        want = target.score(texts, top_logprobs=2)
        for g, w in zip(got, want, strict=True):
            assert g.tokens == w.tokens
            np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-5)
        gens = remote.generate(["the pin of "] * 2, max_tokens=6, seed=3, top_logprobs=1)
        local = target.generate(["the pin of "] * 2, max_tokens=6, seed=3)
        assert [g.text for g in gens] == [g.text for g in local]
        assert gens[0].logprobs is not None and remote.queries_used == 4
        with pytest.raises(
            BudgetExhausted, match=r"query budget exhausted: 4 of 6 queries used, this request needs 3"
        ):
            remote.score(texts + texts[:1])
        chat = OpenAITarget(url, model="micro", api="chat", access="topk_logprobs")
        (c,) = chat.generate(["the pin of"], max_tokens=4, top_logprobs=2, seed=1)
        assert c.logprobs is not None and all(len(t) <= 2 for t in c.logprobs.top)
        text_only = OpenAITarget(url, model="micro", access="text")
        (t,) = text_only.generate(["the pin of"], max_tokens=4)
        assert t.logprobs is None and text_only.access == TextAccess.TEXT


def _flaky_app(answers):
    """A server that plays back ``answers``: (status, body bytes, headers) per request."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    calls = []

    async def handle(request):
        calls.append(await request.body())
        status, body, headers = answers[min(len(calls), len(answers)) - 1]
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    return Starlette(routes=[Route("/v1/completions", handle, methods=["POST"])]), calls


def _ok(text="42"):
    return json.dumps(
        {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}]}
    ).encode()


def test_openai_target_retries_429_and_refuses_malformed_answers():
    from invguard.targets.openai import OpenAITarget

    app, calls = _flaky_app(
        [(429, b"{}", {"Retry-After": "0"}), (429, b"{}", {"Retry-After": "0"}), (200, _ok(), {})]
    )
    with serve(app) as url:
        (g,) = OpenAITarget(url, model="m", access="text", backoff=0).generate(["hi"], max_tokens=2)
        assert g.text == "42" and len(calls) == 3
    app, calls = _flaky_app([(429, b'{"error": "slow down"}', {"Retry-After": "0"})])
    with serve(app) as url:
        t = OpenAITarget(url, model="m", access="text", retries=1, backoff=0)
        with pytest.raises(TargetError, match=r"-> 429 .*still rate-limited after retries"):
            t.generate(["hi"], max_tokens=2)
        assert t.queries_used == 0
    cases = [
        (b"not json", r"response is not valid JSON"),
        (b'{"choices": "x"}', r"does not follow the OpenAI completions format \(choices must be a list\)"),
        (
            _ok().replace(b'"42"', b"42"),
            r"does not follow the OpenAI completions format \(a choice's text must be a string\)",
        ),
        (json.dumps({"choices": []}).encode(), r"expected 1 choices, got 0"),
        (b"[1, 2]", r"response is not a JSON object"),
    ]
    for body, msg in cases:
        app, _ = _flaky_app([(200, body, {})])
        with serve(app) as url, pytest.raises(TargetError, match=msg):
            OpenAITarget(url, model="m", access="text").generate(["hi"], max_tokens=2)
    app, _ = _flaky_app([(500, b'{"error": "boom"}', {})])
    with serve(app) as url, pytest.raises(TargetError, match=r"-> 500 .*answered with an error status"):
        OpenAITarget(url, model="m", access="text").generate(["hi"], max_tokens=2)
    app, _ = _flaky_app(
        [
            (
                200,
                json.dumps(
                    {
                        "choices": [
                            {"index": 0, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": []}}
                        ]
                    }
                ).encode(),
                {},
            )
        ]
    )
    with (
        serve(app) as url,
        pytest.raises(
            TargetError, match=r"logprobs.tokens and logprobs.token_logprobs must be lists of one length"
        ),
    ):
        OpenAITarget(url, model="m", access="logprobs").score(["x"])


def test_openai_target_config_errors(monkeypatch):
    from invguard.core import ConfigError
    from invguard.targets.openai import OpenAITarget

    with pytest.raises(ConfigError, match=r"environment variable NOPE_KEY \(api_key_env\) is not set"):
        OpenAITarget("http://127.0.0.1:1", model="m", api_key_env="NOPE_KEY")
    with pytest.raises(ConfigError, match=r"grants at most LOGPROBS"):
        OpenAITarget("http://127.0.0.1:1", model="m", access="whitebox")
    monkeypatch.setenv("LM_KEY", "sk-test")
    t = OpenAITarget("http://127.0.0.1:1/v1", model="m", api_key_env="LM_KEY")
    assert t._endpoint.headers["Authorization"] == "Bearer sk-test" and t.url.endswith("/v1/completions")
    assert "sk-test" not in t.describe()


def test_lm_training_progress_reports_each_epochs_finite_mean_loss():
    from invguard.models.lm import epoch_mean_loss, train_lm

    calls: list[tuple[int, int, float]] = []
    docs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]
    spec = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16, "vocab_size": 300, "epochs": 3}
    _, _, report = train_lm(docs, spec=spec, seed=0, progress=lambda e, n, loss: calls.append((e, n, loss)))
    assert [(e, n) for e, n, _ in calls] == [(1, 3), (2, 3), (3, 3)]  # once per epoch, not per step
    assert all(np.isfinite(loss) and loss > 0 for _, _, loss in calls)
    assert calls[-1][2] < calls[0][2]  # it learns
    per_epoch = report.steps // 3
    assert calls[0][2] == pytest.approx(np.mean(report.losses[:per_epoch]), rel=0.2)
    # a short last batch counts for the sequences it holds
    assert epoch_mean_loss([2.0, 5.0], [3, 1]) == pytest.approx(2.75)
    with pytest.raises(ValueError, match="one loss per batch"):
        epoch_mean_loss([], [])
