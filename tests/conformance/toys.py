"""A toy attack, a toy output policy and a toy target: each one file's worth of code and one registry
line, and each passes its conformance suite unchanged (that is what the suites are for).

- ``toy.margin`` (attack): membership by the gap between the top two scores (a confident model is
  more confident on its training records); judged by the membership judge it shares with every
  membership attack.
- ``toy_floor`` (policy): scores below a floor are zeroed and the rest renormalised.
- ``toy`` (target): a linear softmax model in numpy, with logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks import ATTACKS, Attack
from invguard.attacks.membership.common import candidates_of, scored, splits_of
from invguard.core import Access, BaseTarget, Prediction
from invguard.core.params import Int, Real, Spec, check
from invguard.policies import POLICIES, OutputPolicy
from invguard.targets import TARGETS


@ATTACKS.register("toy.margin")
@dataclass(frozen=True)
class TopTwoMargin(Attack):
    name: ClassVar[str] = "toy.margin"
    requires: ClassVar[Access] = Access.SCORES
    fast_params: ClassVar[Mapping[str, Any]] = {"n_boot": 50}

    n_boot: int = 200

    constraints: ClassVar[Mapping[str, Spec]] = {"n_boot": Int(0)}

    def search(self, target, data, rng, ctx):
        splits = splits_of(data, self.name)
        cand = candidates_of(splits)
        p = np.sort(target.predict(cand.X).scores, axis=1)
        return scored(p[:, -1] - p[:, -2], cand, decision_threshold=None, info={"statistic": "top-2 margin"})


@POLICIES.register("toy_floor")
class Floor(OutputPolicy):
    name = "toy_floor"

    constraints: ClassVar[Mapping[str, Spec]] = {"floor": Real(0, 1, "left")}

    def __init__(self, floor: float = 0.05) -> None:
        check(self.name, {"floor": floor}, self.constraints)
        self.floor = float(floor)

    def params(self) -> dict[str, Any]:
        return {"floor": self.floor}

    def transform(self, pred: Prediction) -> Prediction:
        p = pred.probabilities().copy()
        rows = np.arange(len(p))
        keep = p[rows, pred.labels].copy()
        p[p < self.floor] = 0.0
        p[rows, pred.labels] = keep
        return Prediction.derived(pred, scores=p / p.sum(axis=1, keepdims=True), access=Access.SCORES)


@TARGETS.register("toy")
class LinearSoftmax(BaseTarget):
    def __init__(self, W, b, *, input_shape, budget=None, name="toy"):
        super().__init__(
            num_classes=W.shape[1], input_shape=input_shape, access=Access.LOGITS, budget=budget, name=name
        )
        self.W, self.b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def _predict(self, x):
        return Prediction.from_logits(x.reshape(len(x), -1).astype(np.float64) @ self.W + self.b, self.access)
