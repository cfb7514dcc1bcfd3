import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from invguard import policies
from invguard.core import Access, ConfigError, Prediction
from invguard.targets import CallableTarget

logit_batches = arrays(
    np.float64,
    st.tuples(st.integers(1, 8), st.integers(2, 12)),
    elements=st.floats(-20, 20, allow_nan=False, allow_infinity=False),
)


def pred_of(logits):
    return Prediction.from_logits(logits, Access.LOGITS)


ALL = [
    policies.Identity(),
    policies.ScoresOnly(),
    policies.LabelOnly(),
    policies.TopK(1),
    policies.TopK(3),
    policies.Round(0),
    policies.Round(2),
    policies.Noise(0.1, seed=1),
    policies.Noise(0.1, "laplace", seed=1),
    policies.Temperature(3.0),
    policies.ReverseSigmoid(0.5, 0.2),
    policies.TopK(3) | policies.Round(2),
]


@settings(max_examples=60, deadline=None)
@given(logit_batches)
def test_label_only_never_returns_scores(logits):
    out = policies.LabelOnly().apply(pred_of(logits))
    assert out.scores is None and out.logits is None and out.access is Access.LABEL
    assert out.labels.tolist() == np.argmax(logits, 1).tolist()


@settings(max_examples=80, deadline=None)
@given(logit_batches, st.integers(1, 12))
def test_top_k_keeps_exactly_k_and_sums_to_one(logits, k):
    p = pred_of(logits)
    out = policies.TopK(k).apply(p)
    kk = min(k, logits.shape[1])
    positive = p.scores > 0
    # exactly k non-zero entries wherever the model's own top k were non-zero
    expected = np.minimum(kk, positive.sum(1))
    assert ((out.scores > 0).sum(1) == expected).all()
    np.testing.assert_allclose(out.scores.sum(1), 1.0, rtol=1e-9)
    assert (np.argmax(out.scores, 1) == np.argmax(p.scores, 1)).all()
    assert out.logits is None and out.access is Access.SCORES


@settings(max_examples=80, deadline=None)
@given(logit_batches, st.integers(0, 6))
def test_rounding_is_idempotent(logits, d):
    once = policies.Round(d).apply(pred_of(logits))
    twice = policies.Round(d).apply(once)
    np.testing.assert_array_equal(once.scores, twice.scores)
    assert once.labels.tolist() == np.argmax(logits, 1).tolist()


@settings(max_examples=60, deadline=None)
@given(logit_batches)
def test_argmax_preserved_where_promised(logits):
    p = pred_of(logits)
    for pol in ALL:
        out = pol.apply(p)
        assert out.labels.tolist() == p.labels.tolist(), pol  # labels are always the model's own
        if pol.preserves_argmax and out.scores is not None:
            top = np.max(out.scores, 1, keepdims=True)
            # the model's label is among the maxima of the returned scores (rounding may create ties)
            assert (out.scores[np.arange(len(p)), p.labels] >= top[:, 0] - 1e-12).all(), pol


@settings(max_examples=40, deadline=None)
@given(logit_batches)
def test_every_policy_returns_valid_probabilities(logits):
    for pol in ALL:
        out = pol.apply(pred_of(logits))
        assert out.access <= pol.cap
        if out.scores is not None:
            assert np.all(out.scores >= 0) and np.all(out.scores <= 1 + 1e-12)


def test_noise_is_seeded():
    logits = np.random.default_rng(0).normal(size=(4, 5))
    a = policies.Noise(0.2, seed=7).apply(pred_of(logits)).scores
    b = policies.Noise(0.2, seed=7).apply(pred_of(logits)).scores
    c = policies.Noise(0.2, seed=8).apply(pred_of(logits)).scores
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_reverse_sigmoid_matches_the_formula():
    p = np.array([[0.7, 0.2, 0.1]])
    beta, gamma = 0.5, 0.2
    q = np.clip(p, 1e-12, 1 - 1e-12)
    r = beta * (1 / (1 + np.exp(-gamma * np.log(q / (1 - q)))) - 0.5)
    expected = np.clip(p - r, 0, 1)
    expected /= expected.sum()
    out = policies.ReverseSigmoid(beta, gamma).apply(Prediction.from_scores(p, Access.SCORES))
    np.testing.assert_allclose(out.scores, expected)


def test_composition_lowers_access_and_describes_itself():
    target = CallableTarget(
        lambda x: np.tile([[2.0, 1.0, 0.5, 0.1]], (len(x), 1)),
        input_shape=(2,),
        num_classes=4,
        outputs="logits",
    )
    assert target.access is Access.LOGITS
    wrapped = (policies.TopK(3) | policies.Round(2)).wrap(target)
    assert wrapped.access is Access.SCORES
    assert wrapped.describe() == "SCORES (top_k=3, rounded to 2 decimals)"
    out = wrapped.predict(np.zeros((3, 2)))
    assert out.logits is None and ((out.scores > 0).sum(1) == 3).all()
    assert target.queries_used == 3 and wrapped.queries_used == 3
    assert policies.LabelOnly().wrap(wrapped).access is Access.LABEL
    assert policies.Identity().wrap(target).access is Access.LOGITS


def test_parse_forms():
    assert policies.parse("label_only") == policies.LabelOnly()
    assert policies.parse("top_k=3 round=2") == policies.TopK(3) | policies.Round(2)
    assert policies.parse({"top_k": 3, "round": 2}) == policies.TopK(3) | policies.Round(2)
    assert policies.parse([{"noise": {"scale": 0.1, "seed": 3}}]) == policies.Noise(0.1, seed=3)
    assert policies.parse("logits") == policies.Identity()


def test_parse_errors_name_the_place():
    with pytest.raises(ConfigError, match=r"roles.partner: unknown output policy 'top3'; known: identity"):
        policies.parse("top3", "roles.partner")
    with pytest.raises(ConfigError, match=r"roles.x.top_k: top_k: k must be an integer >= 1, got 0"):
        policies.parse({"top_k": 0}, "roles.x")
    with pytest.raises(ConfigError, match="round: decimals must be an integer in"):
        policies.Round(-1)
