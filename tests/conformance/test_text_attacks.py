"""Every registered text attack runs through the attack contract, on the tests' micro LM (its
canaries inserted 0/1/10/50 times), at its declared ``fast_params``:

- refused below its access with no query spent (a text policy that strips what it needs);
- seeded runs are identical;
- a budget is never exceeded: on the local model through a text policy, and through the
  OpenAI-compatible HTTP target (rows served counted by the server);
- the result round-trips through JSON, its audit document matches the published schema and the
  HTML report renders it (with extracted secrets redacted).

This is the text family's world of ``tests/conformance/test_attacks.py``; a new text attack passes
it unchanged, or it is not done.
"""

from __future__ import annotations

import os

import pytest

from invguard.attacks import ATTACKS, RunContext
from invguard.core import AccessError, TextAccess
from invguard.core.result import AttackResult
from tests.conformance.contract import comparable, rendered, within_budget
from tests.servers import serve

BUDGET = 40
NAMES = [n for n in ATTACKS.names() if ATTACKS.get(n).data_kind == "text"]


@pytest.fixture(scope="module")
def lm(micro_lm):
    from invguard.targets.hf_lm import HFLMTarget

    path, splits = micro_lm
    return path, splits, HFLMTarget(path)


@pytest.fixture(scope="module")
def tctx(run_cache):
    return RunContext(cache_dir=run_cache)


@pytest.fixture(scope="module")
def text_server(lm):
    """The micro LM behind an OpenAI-compatible /v1/completions on loopback, counting prompts served."""
    from invguard.models.lm_server import openai_app
    from invguard.targets.hf_lm import HFLMTarget

    path, _, _ = lm
    model = HFLMTarget(path)
    app = openai_app(model, model_name="micro")
    with serve(app) as url:
        yield url, model


@pytest.fixture(scope="module")
def first_text_runs(lm, tctx):
    cache: dict[str, AttackResult] = {}

    def get(name: str) -> AttackResult:
        if name not in cache:
            from invguard.targets.hf_lm import HFLMTarget

            path, splits, _ = lm
            cache[name] = ATTACKS.get(name).fast().run(HFLMTarget(path), splits, seed=1, context=tctx)
        return cache[name]

    return get


def test_the_text_family_has_attacks_here():
    assert {"text.exposure", "text.extraction", "text.membership"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_refused_below_its_access_with_no_query_spent(name, lm):
    from invguard.policies.text import StripLogprobs, TextPolicyTarget
    from invguard.targets.hf_lm import HFLMTarget

    path, splits, _ = lm
    cls = ATTACKS.get(name)
    if cls.requires <= TextAccess.TEXT:
        assert cls.requires == TextAccess.TEXT  # nothing lies below generated text to refuse
        return
    inner = HFLMTarget(path)
    lower = TextPolicyTarget(inner, StripLogprobs())
    with pytest.raises(AccessError, match=rf"^{name} needs {cls.requires.name}; this target grants "):
        cls.fast().run(lower, splits)
    assert inner.queries_used == 0


@pytest.mark.parametrize("name", NAMES)
def test_seeded_runs_are_identical(name, lm, tctx, first_text_runs):
    from invguard.targets.hf_lm import HFLMTarget

    path, splits, _ = lm
    again = ATTACKS.get(name).fast().run(HFLMTarget(path), splits, seed=1, context=tctx)
    assert comparable(again) == comparable(first_text_runs(name))


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_never_exceeded_through_a_text_policy_and_the_http_target(name, lm, tctx, text_server):
    from invguard.policies.text import SecretFilter, TextPolicyTarget
    from invguard.targets.hf_lm import HFLMTarget
    from invguard.targets.openai import OpenAITarget

    path, splits, _ = lm
    attack = ATTACKS.get(name).fast()
    inner = HFLMTarget(path, budget=BUDGET)
    within_budget(attack, TextPolicyTarget(inner, SecretFilter()), splits, tctx, inner, BUDGET)
    assert inner.queries_used <= BUDGET
    url, served = text_server
    before = served.queries_used
    http = OpenAITarget(url, model="micro", budget=BUDGET, retries=0)
    if attack.requires > http.access:
        with pytest.raises(AccessError):
            attack.run(http, splits)
    else:
        within_budget(attack, http, splits, tctx, http, BUDGET)
    assert served.queries_used - before == http.queries_used <= BUDGET


@pytest.mark.parametrize("name", NAMES)
def test_result_round_trips_matches_the_schema_and_renders(name, lm, first_text_runs):
    from invguard.audit.config import parse_config

    _, splits, _ = lm
    r = first_text_runs(name)
    cfg = parse_config(
        {
            "target": {"kind": "hf_lm", "model": "reference/pydoc-gpt2-micro"},
            "attacks": [{"name": name, "params": dict(ATTACKS.get(name).fast_params)}],
            "cache_dir": os.environ["INVGUARD_CACHE"],
        }
    )
    page = rendered(r, cfg, splits, kind="hf_lm", model="pydoc-gpt2-micro")
    for c in splits.canaries:  # no canary is printed in clear by default
        assert c.secret not in page
