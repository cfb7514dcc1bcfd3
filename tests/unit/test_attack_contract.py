"""The Attack contract: validation, access check before any query, seeding and provenance."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest

from invguard import policies
from invguard.attacks import Attack, AttackOutput, RunContext
from invguard.attacks.base import Case, Evidence
from invguard.core import Access, AccessError, ConfigError
from invguard.core.params import Int
from invguard.core.result import Metric
from invguard.judges import register_judge
from invguard.targets import CallableTarget


@dataclass(frozen=True, kw_only=True)
class TopScores(Evidence):
    scores: np.ndarray


@register_judge(TopScores)
def _judge_top_scores(ev: TopScores, case: Case) -> AttackOutput:
    return AttackOutput(metrics={"mean_top_score": Metric(float(ev.scores.mean()))}, info={"judged": True})


@dataclass(frozen=True)
class MeanScore(Attack):
    """A tiny real attack used only to test the contract: mean top score over random probes."""

    name = "test.mean_score"
    requires = Access.SCORES
    probes: int = 10

    constraints: ClassVar[Mapping[str, Any]] = {"probes": Int(1)}

    def search(self, target, data, rng, ctx):
        x = rng.random((self.probes, *target.input_shape))
        return TopScores(scores=target.predict(x).scores.max(1))


def target():
    w = np.random.default_rng(0).normal(size=(4, 3))
    return CallableTarget(lambda x: x @ w, input_shape=(4,), num_classes=3, outputs="logits")


def test_access_refused_before_any_query():
    t = policies.LabelOnly().wrap(target())
    with pytest.raises(
        AccessError, match=r"test.mean_score needs SCORES; this target grants LABEL \(label only\)"
    ):
        MeanScore().run(t, None)
    assert t.queries_used == 0


def test_validation_and_seeded_reproducibility():
    with pytest.raises(ConfigError, match=r"test\.mean_score: probes must be a whole number >= 1, got 0"):
        MeanScore(probes=0)
    a = MeanScore().run(target(), None, seed=3)
    b = MeanScore().run(target(), None, seed=3)
    c = MeanScore().run(target(), None, seed=4)
    assert a.metric("mean_top_score") == b.metric("mean_top_score") != c.metric("mean_top_score")
    assert a.queries_used == 10 and a.params == {"probes": 10} and a.access == "LOGITS"


def test_run_context_maps_serially_or_through_an_executor():
    from concurrent.futures import ThreadPoolExecutor

    assert RunContext().map(lambda a, b: a + b, [1, 2], [3, 4]) == [4, 6]
    with ThreadPoolExecutor(2) as ex:
        assert RunContext(executor=ex).map(lambda a: a * 2, [1, 2, 3]) == [2, 4, 6]


# ------------------------------------------------------------------ search -> evidence -> judge


@dataclass(frozen=True)
class SearchingMeanScore(Attack):
    name = "test.searching_mean_score"
    requires = Access.SCORES
    probes: int = 10

    def search(self, target, data, rng, ctx):
        x = rng.random((self.probes, *target.input_shape))
        return TopScores(scores=target.predict(x).scores.max(1), info={"probes": self.probes})


@dataclass(frozen=True, kw_only=True)
class Unjudged(Evidence):
    pass


@dataclass(frozen=True)
class UnjudgedAttack(Attack):
    name = "test.unjudged"

    def search(self, target, data, rng, ctx):
        return Unjudged()


def test_search_evidence_is_judged_by_its_registered_judge():
    a = SearchingMeanScore().run(target(), None, seed=3)
    same = MeanScore().run(target(), None, seed=3)
    assert a.metric("mean_top_score") == same.metric("mean_top_score")  # same generator, same probes
    assert a.info["judged"] is True and a.info["probes"] == 10 and a.queries_used == 10


def test_a_second_judge_for_one_evidence_type_is_refused_and_a_missing_one_is_named():
    with pytest.raises(ValueError, match=r"a judge for .*TopScores is already registered"):
        register_judge(TopScores)(lambda ev, case: AttackOutput())
    with pytest.raises(LookupError, match=r"no judge is registered for .*Unjudged"):
        UnjudgedAttack().run(target(), None)
