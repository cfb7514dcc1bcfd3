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
