"""Output policies: what a model's answer is reduced to before anyone sees it.

The same objects are measured by the audit (wrap a target, attack it) and enforced by the guard
(apply to each response). They work on numpy arrays, single requests or batches, with no torch.

>>> from invguard import policies
>>> exposed = policies.TopK(3) | policies.Round(2)
>>> exposed.describe()
'SCORES (top_k=3, rounded to 2 decimals)'
"""

from invguard.policies.base import POLICIES, Chain, OutputPolicy, PolicyTarget, parse
from invguard.policies.standard import (
    Identity,
    LabelOnly,
    Noise,
    ReverseSigmoid,
    Round,
    ScoresOnly,
    Temperature,
    TopK,
)

__all__ = [
    "POLICIES",
    "Chain",
    "Identity",
    "LabelOnly",
    "Noise",
    "OutputPolicy",
    "PolicyTarget",
    "ReverseSigmoid",
    "Round",
    "ScoresOnly",
    "Temperature",
    "TopK",
    "parse",
]
