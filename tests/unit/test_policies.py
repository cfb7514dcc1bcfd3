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
    rows = np.arange(len(p))
    assert (out.scores[rows, p.labels] == out.scores.max(1)).all()  # the model's own label stays on top
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


def test_noise_is_unseeded_by_default_and_declares_its_randomness():
    """The default draws OS entropy (a known seed hands an attacker the noise stream); an audit
    seeds an unseeded step from its run seed; the guard rebuilds a seeded one unseeded."""
    logits = np.random.default_rng(0).normal(size=(50, 10))
    noise = policies.Noise(0.2)
    assert noise.seed is None and noise.random and not policies.TopK(3).random
    a, b = (policies.Noise(0.2).apply(pred_of(logits)).scores for _ in range(2))
    assert not np.allclose(a, b)
    chain = policies.TopK(3) | policies.Noise(0.2)
    assert chain.random and chain.leaves == Access.SCORES
    audit = chain.seeded_by_default(5)
    assert audit.steps()[1].seed == 5 and policies.Noise(0.2, seed=1).seeded_by_default(5).seed == 1
    fresh = chain.reseeded(None).steps()
    assert fresh[1].seed is None and fresh[0] == policies.TopK(3)
    assert policies.TopK(1).leaves == Access.LABEL and policies.TopK(1).cap == Access.SCORES


def test_noise_is_seeded():
    logits = np.random.default_rng(0).normal(size=(4, 5))
    a = policies.Noise(0.2, seed=7).apply(pred_of(logits)).scores
    b = policies.Noise(0.2, seed=7).apply(pred_of(logits)).scores
    c = policies.Noise(0.2, seed=8).apply(pred_of(logits)).scores
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_reverse_sigmoid_reference_values_and_properties():
    # reference values from the independent implementation in IBM ART (ReverseSigmoid, beta=0.5, gamma=0.2)
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    expected = np.array([[0.63602035, 0.2196402, 0.14433944], [0.38950941, 0.34708086, 0.26340973]])
    out = policies.ReverseSigmoid(0.5, 0.2).apply(Prediction.from_scores(p, Access.SCORES))
    np.testing.assert_allclose(out.scores, expected, rtol=1e-7)
    # p = 0.5 everywhere is a fixed point (r = 0), and a confident top score is pulled down
    half = policies.ReverseSigmoid(1.0, 0.5).apply(
        Prediction.from_scores(np.array([[0.5, 0.5]]), Access.SCORES)
    )
    np.testing.assert_allclose(half.scores, [[0.5, 0.5]])
    assert out.scores[0, 0] < p[0, 0]


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


def test_nested_wraps_keep_every_policy_and_the_effective_budget():
    target = CallableTarget(
        lambda x: np.tile([[2.0, 1.0, 0.5, 0.1]], (len(x), 1)),
        input_shape=(2,),
        num_classes=4,
        outputs="logits",
        budget=10,
    )
    view = policies.TopK(1).wrap(policies.Round(1).wrap(target))
    assert view.describe() == "SCORES (rounded to 1 decimals, top_k=1)"
    assert view.budget == 10 and view.queries_left == 10
    view.predict(np.zeros((7, 2)))
    assert view.queries_left == 3 and target.queries_used == 7
    own = policies.PolicyTarget(target, policies.Round(2), budget=2)
    assert own.queries_left == 2
    own.predict(np.zeros((2, 2)))
    assert own.queries_left == 0 and target.queries_left == 1


def test_parse_errors_name_the_place():
    with pytest.raises(ConfigError, match=r"roles.partner: unknown output policy 'top3'; known: identity"):
        policies.parse("top3", "roles.partner")
    with pytest.raises(ConfigError, match=r"roles.x.top_k: top_k: k must be a whole number >= 1, got 0"):
        policies.parse({"top_k": 0}, "roles.x")
    with pytest.raises(ConfigError, match=r"round: decimals must be a whole number in \[0, 10\], got"):
        policies.Round(-1)
    with pytest.raises(ConfigError, match=r"'top_k' needs a value after '=' \(e.g. top_k=3\)"):
        policies.parse("top_k=")
    with pytest.raises(ConfigError, match="noise: seed must be None or a whole number, got 'x'"):
        policies.Noise(0.1, seed="x")
    assert policies.Noise(np.float32(0.1)).scale == pytest.approx(0.1)
