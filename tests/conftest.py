"""Session-scoped fixtures: tiny models on 8x8 digits, trained once per test session."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault(
    "INVGUARD_CACHE", os.path.join(os.path.dirname(__file__), "..", ".invguard", "test-cache")
)


@pytest.fixture(scope="session")
def digits():
    from invguard import data

    return data.load("digits", seed=0)


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """A small MLP trained on the digits members split (quick recipe)."""
    from invguard.models.train import fit

    spec = {"arch": "mlp", "hidden": [64], "input_shape": list(digits.input_shape), "num_classes": 10}
    module, _ = fit(spec, digits.members.X, digits.members.y, recipe="quick", seed=0)
    return module


@pytest.fixture(scope="session")
def digits_sklearn(digits):
    from sklearn.linear_model import LogisticRegression

    X = digits.members.X.reshape(len(digits.members), -1)
    return LogisticRegression(max_iter=300).fit(X, digits.members.y)


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory):
    """One cache of trained artifacts (evaluators, controls, generators) for the whole session: the
    test files that judge the same splits share them instead of training their own."""
    return tmp_path_factory.mktemp("run-cache")


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def micro_lm():
    """The tests' tiny reference LM (2 layers, 64 wide) with canaries inserted 0/1/10/50 times:
    ``(model directory, TextSplits)``; trained once, then cached in the test cache."""
    from invguard.models.lm import reference_lm

    return reference_lm("pydoc-gpt2-micro")
