import numpy as np
import pytest

from invguard.core import (
    Access,
    AccessError,
    BudgetExhausted,
    ConfigError,
    InvguardError,
    Prediction,
    TargetError,
)
from invguard.core.registry import Registry
from invguard.core.result import AttackResult, Metric


def test_access_order_and_parse():
    assert Access.LABEL < Access.SCORES < Access.LOGITS < Access.WHITEBOX
    assert Access.parse("scores") is Access.SCORES
    assert Access.parse("White-Box".replace("-", "")) is Access.WHITEBOX
    with pytest.raises(
        ConfigError, match=r"unknown access level 'probs'; expected one of \['label', 'scores'"
    ):
        Access.parse("probs")


def test_error_hierarchy_and_exit_codes():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, InvguardError)
    assert ConfigError("x").exit_code == 2
    assert TargetError("x").exit_code == 3
    assert issubclass(AccessError, InvguardError) and issubclass(BudgetExhausted, InvguardError)


def test_prediction_refuses_more_than_its_access():
    with pytest.raises(ValueError, match="LABEL-access prediction cannot carry scores"):
        Prediction(labels=np.array([0]), scores=np.array([[1.0, 0.0]]), access=Access.LABEL)
    with pytest.raises(ValueError, match="below LOGITS access cannot carry logits"):
        Prediction(
            labels=np.array([0]), scores=np.array([[1.0, 0.0]]), logits=np.zeros((1, 2)), access=Access.SCORES
        )


def test_prediction_from_logits_by_access():
    logits = np.array([[1.0, 3.0, 0.0]])
    p = Prediction.from_logits(logits, Access.SCORES)
    assert p.logits is None and p.scores is not None and p.labels.tolist() == [1]
    np.testing.assert_allclose(p.scores.sum(), 1.0)
    assert Prediction.from_logits(logits, Access.LABEL).scores is None


def test_prediction_from_raw_outputs_checks_their_shape():
    with pytest.raises(ValueError, match=r"logits must have shape \(n, classes\), got \(3,\)"):
        Prediction.from_logits(np.array([1.0, 3.0, 0.0]), Access.LOGITS)
    with pytest.raises(ValueError, match=r"scores must have shape \(n, classes\), got \(1, 1, 3\)"):
        Prediction.from_scores(np.ones((1, 1, 3)) / 3, Access.SCORES)


def test_derived_prediction_keeps_labels_and_access_invariants():
    base = Prediction.from_logits(np.array([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]]), Access.LOGITS)
    d = Prediction.derived(base, scores=np.full((2, 3), 1 / 3), access=Access.SCORES)
    assert d.labels is base.labels and d.logits is None and d.access is Access.SCORES
    with pytest.raises(ValueError, match="a LABEL prediction cannot carry outputs above its access"):
        Prediction.derived(base, scores=base.scores, access=Access.LABEL)
    with pytest.raises(
        ValueError,
        match=r"a SCORES prediction cannot carry outputs above its access \(scores need SCORES, "
        r"logits need LOGITS\)",
    ):
        Prediction.derived(base, scores=base.scores, logits=base.logits, access=Access.SCORES)
    with pytest.raises(ValueError, match=r"must keep 2 rows, got \(1, 3\)"):
        Prediction.derived(base, scores=np.full((1, 3), 1 / 3), access=Access.SCORES)


def test_registry_refuses_duplicates_and_suggests():
    reg: Registry[int] = Registry("widget")
    reg.register("inversion.whitebox")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("inversion.whitebox")(2)
    with pytest.raises(
        ConfigError, match=r"unknown widget 'inversion.whitebx'; did you mean 'inversion.whitebox'"
    ):
        reg.get("inversion.whitebx")


def test_result_json_round_trip():
    r = AttackResult(
        attack="a.b",
        params={"k": np.int64(3)},
        target="SCORES",
        access="SCORES",
        metrics={"m": Metric(0.5, 0.4, 0.6)},
        queries_used=10,
        wall_time_s=0.1,
        seed=0,
        arrays={"x": np.arange(6, dtype=float).reshape(2, 3)},
        tables={"t": [{"a": 1}]},
    )
    d = r.to_json()
    assert d["schema_version"] == "1.0" and d["params"] == {"k": 3}
    back = AttackResult.from_json(d)
    assert back.metric("m").value == 0.5 and back.arrays["x"].shape == (2, 3)
    assert format(back.metric("m"), ".2f") == "0.50 [0.40, 0.60]"
    with pytest.raises(KeyError, match="has no metric 'z'"):
        r.metric("z")
