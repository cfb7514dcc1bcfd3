"""Every registered output policy, built with its defaults, keeps the policy contract.

- an answer never carries more than the policy's ``cap``, and never more than the access the
  policy declares it ``leaves`` an attacker; the model's labels are kept;
- a policy that does not declare itself ``random`` answers the same way twice; a random one
  reproduces once seeded and differs once reseeded from OS entropy (what the guard does);
- wrapping lowers a target's access to the cap; the spec round-trips through ``parse``.

``tests/conformance/toys.py`` adds a policy in one file and one registry line and passes unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import tests.conformance.toys  # noqa: F401  (registers the toy policy)
from invguard import policies
from invguard.core import Access, Prediction
from invguard.targets import CallableTarget

NAMES = policies.POLICIES.names()
LOGITS = np.random.default_rng(0).normal(size=(40, 10)) * 3


def _pred() -> Prediction:
    return Prediction.from_logits(LOGITS, Access.LOGITS)


def test_the_registry_holds_the_standard_policies_and_the_toy():
    assert {"identity", "scores", "label_only", "top_k", "round", "noise", "toy_floor"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_answers_stay_within_the_cap_and_keep_the_labels(name):
    pol = policies.POLICIES.get(name)()
    assert pol.leaves <= pol.cap
    out = pol.apply(_pred())
    assert out.access <= pol.cap and out.labels.tolist() == _pred().labels.tolist()
    assert (out.scores is None) or out.scores.shape == LOGITS.shape
    if pol.cap < Access.LOGITS:
        assert out.logits is None
    label = Prediction.from_logits(LOGITS, Access.LABEL)
    assert pol.apply(label).access == Access.LABEL and pol.apply(label).scores is None


@pytest.mark.parametrize("name", NAMES)
def test_randomness_is_declared(name):
    pol = policies.POLICIES.get(name)()
    if not pol.random:
        a, b = pol.apply(_pred()), pol.apply(_pred())
        assert (a.scores is None and b.scores is None) or np.array_equal(a.scores, b.scores)
        assert pol.reseeded(None) is pol
        return
    a = pol.reseeded(3).apply(_pred()).scores
    b = pol.reseeded(3).apply(_pred()).scores
    c = pol.reseeded(None).apply(_pred()).scores
    d = pol.reseeded(None).apply(_pred()).scores
    assert np.array_equal(a, b) and not np.array_equal(c, d)


@pytest.mark.parametrize("name", NAMES)
def test_wrapping_lowers_access_and_the_spec_round_trips(name):
    pol = policies.POLICIES.get(name)()
    t = CallableTarget(
        lambda x: x.reshape(len(x), -1) @ np.eye(4), input_shape=(4,), num_classes=4, outputs="logits"
    )
    wrapped = pol.wrap(t)
    assert wrapped.access == min(Access.LOGITS, pol.cap)
    wrapped.predict(np.eye(4))
    assert t.queries_used == 4 and wrapped.queries_used == 4
    assert policies.parse(pol.to_spec()) == pol
