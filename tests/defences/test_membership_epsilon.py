"""Every membership result states the epsilon its ROC implies at low FPR, with its interval."""

import numpy as np

from invguard.attacks.membership.common import Candidates
from invguard.judges.membership import membership_output


def cand(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    is_member = np.r_[np.ones(n // 2, np.int64), np.zeros(n // 2, np.int64)]
    return Candidates(rng.random((n, 4)), rng.integers(0, 3, n), is_member, np.arange(n)), rng


def truth(c):
    return {"is_member": c.is_member, "indices": c.indices, "labels": c.y}


def test_a_leaky_roc_implies_a_large_epsilon_and_says_so():
    c, rng = cand()
    scores = c.is_member * 3.0 + rng.normal(0, 1, len(c))  # members stand out
    out = membership_output(
        "membership.test", scores, **truth(c), decision_threshold=None, n_boot=100, seed=0
    )
    eps = out.metrics["epsilon_at_fpr_0.01"]
    assert 1.0 < eps.low <= eps.value <= eps.high
    assert f"no better than epsilon >= {eps.low:.2f}-DP (95% confidence" in out.findings[0].detail


def test_chance_scores_imply_no_epsilon():
    c, rng = cand(seed=1)
    out = membership_output(
        "membership.test", rng.random(len(c)), **truth(c), decision_threshold=None, n_boot=50, seed=0
    )
    eps = out.metrics["epsilon_at_fpr_0.01"]
    assert eps.low == 0.0 and eps.high < 3.5  # an interval, but no lower bound above 0
