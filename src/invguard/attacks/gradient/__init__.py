"""Gradient leakage in federated learning: reconstruct clients' training inputs from the updates
they share.

``gradient.labels`` (iDLG at batch 1, count-based beyond), ``gradient.dlg`` (Zhu et al. 2019,
L-BFGS on the L2 objective), ``gradient.inverting`` (Geiping et al. 2020: cosine + TV, Adam,
restarts, FedAvg multi-step) and ``gradient.analytic`` (exact recovery through a fully connected
first layer). All are judged by :mod:`invguard.judges.gradient`.
"""

from invguard.attacks.gradient.analytic import AnalyticRecovery
from invguard.attacks.gradient.common import GradientAttack, GradientEvidence
from invguard.attacks.gradient.dlg import DeepLeakage
from invguard.attacks.gradient.inverting import InvertingGradients
from invguard.attacks.gradient.labels import LabelRecovery
from invguard.judges import gradient as _judge  # noqa: F401  (registers the judge)

__all__ = [
    "AnalyticRecovery",
    "DeepLeakage",
    "GradientAttack",
    "GradientEvidence",
    "InvertingGradients",
    "LabelRecovery",
]
