"""Empirical epsilon bounds (metrics.privacy) on a mechanism with a known epsilon."""

import numpy as np
import pytest

from invguard.metrics.privacy import (
    basic_composition,
    clopper_pearson,
    clopper_pearson_epsilon,
    guess_grid,
    one_run_bound,
    one_run_epsilon,
    one_run_metric,
    one_run_p_value,
    randomised_response,
    roc_epsilon_metric,
)


def rr_canaries(eps, m=1000, seed=1):
    # a 95% bound may exceed the truth in up to 5% of runs (about 2% measured over 200 seeds, seed 0
    # among them); test_one_run_bound_coverage_over_many_seeds checks that rate
    rng = np.random.default_rng(seed)
    truth = rng.random(m) < 0.5
    return randomised_response(truth, eps, rng), truth


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0, 4.0])
def test_one_run_bound_stays_below_the_true_epsilon_of_randomised_response(eps):
    s, truth = rr_canaries(eps)
    b = one_run_bound(s, truth)
    assert 0 < b.epsilon <= eps
    assert b.epsilon >= 0.5 * eps  # and it is not vacuous: 1000 canaries see most of it
    _est, low, high = clopper_pearson_epsilon(s, truth)
    assert low <= eps <= high + 1e-9


def test_one_run_bound_coverage_over_many_seeds():
    """A 95% bound: at eps = 1 it may exceed the truth in at most a few of 40 runs."""
    over = sum(one_run_bound(*rr_canaries(1.0, m=400, seed=s)).epsilon > 1.0 for s in range(40))
    assert over <= 4


def test_p_value_and_epsilon_match_the_binomial_tail():
    from scipy.special import expit
    from scipy.stats import binom

    assert one_run_p_value(100, 50, 40, 1.0) == pytest.approx(binom.sf(39, 50, expit(1.0)))
    # delta adds mass: the p-value grows with delta, so the bound shrinks
    assert one_run_p_value(100, 50, 40, 1.0, 1e-3) > one_run_p_value(100, 50, 40, 1.0)
    e = one_run_epsilon(1000, 500, 500)
    assert one_run_p_value(1000, 500, 500, e) == pytest.approx(0.05, rel=1e-3)  # the bound is the root
    assert one_run_epsilon(1000, 500, 250) == 0.0  # chance accuracy refutes nothing
    # perfect separation of 1000 canaries: about 4.6 at 95% (the one-run method's ceiling here)
    truth = np.random.default_rng(0).random(1000) < 0.5
    assert one_run_bound(truth.astype(float), truth).epsilon == pytest.approx(4.59, abs=0.05)


def test_guess_grid_and_bad_input():
    assert guess_grid(1000)[0] == (10, 0) and (500, 0) in guess_grid(1000)
    with pytest.raises(ValueError, match=r"scores \(3\) and is_member \(2\) need the same"):
        one_run_bound([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="need 0 <= correct"):
        one_run_p_value(10, 5, 6, 1.0)


def test_metrics_carry_intervals_and_roc_bound():
    s, truth = rr_canaries(2.0)
    m, _ = one_run_metric(s + np.random.default_rng(1).normal(0, 0.1, s.size), truth, n_boot=50)
    assert m.low <= m.value <= m.high and m.value < 2.0
    r = roc_epsilon_metric(s, truth, max_fpr=0.5)
    assert r.low <= r.value <= r.high and r.low < 2.0 < r.high
    nothing = roc_epsilon_metric(np.zeros(200), truth[:200], max_fpr=0.01)
    assert nothing.value == 0.0 and nothing.low == 0.0


def test_clopper_pearson_and_composition():
    lo, hi = clopper_pearson([0, 5, 10], [10, 10, 10])
    assert lo[0] == 0 and hi[2] == 1 and lo[1] == pytest.approx(0.187, abs=1e-3)
    assert basic_composition([1.0, 2.5], [1e-5, 1e-5]) == (3.5, 2e-5)
