"""Label recovery from the last layer's update.

- **Batch 1** (iDLG; Zhao, Mopuri & Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020):
  with softmax cross-entropy, the gradient of the last layer's bias is ``p - onehot(y)``, negative
  exactly at the true label; without a bias, the weight rows are ``(p_i - y_i) h`` with ``h >= 0``
  after a ReLU, so the true label's row is the one with a negative sum. Exact.
- **Batch B > 1** (count-based, after Wainakh et al., "User-Level Label Leakage from Gradients in
  Federated Learning", PETS 2022, and Geng et al., "Towards General Deep Leakage in Federated
  Learning", 2021): the mean bias gradient is ``(1/B) sum_n (p_n - onehot(y_n))``. The server holds
  the model, so it estimates ``P[c]``, the model's mean softmax on a record of class c, from its
  public data; then ``g_b = (1/B) A n`` with ``A[:, c] = P[c] - e_c`` and ``n`` the label counts,
  which are recovered greedily (one label at a time, the one that most reduces the residual),
  so repeated labels are counted. FedAvg deltas are turned into a mean gradient first
  (``-delta / (lr * steps)``); DP noise and compression enter the residual as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS
from invguard.attacks.gradient.common import GradientAttack
from invguard.core.errors import ConfigError
from invguard.federated.updates import Observation


def _last_layer(o: Observation, num_classes: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(weight gradient (C, H), bias gradient (C,)) of the classification layer, as a mean gradient."""
    upd = [np.asarray(u, dtype=np.float64) for u in o.update]
    scale = 1.0 if o.kind == "gradient" else -1.0 / (o.local_lr * o.local_steps)
    last = upd[-1]
    if last.ndim == 1 and last.shape[0] == num_classes and len(upd) >= 2 and upd[-2].ndim == 2:
        return upd[-2] * scale, last * scale
    if last.ndim == 2 and last.shape[0] == num_classes:
        return last * scale, None
    raise ConfigError(
        f"label recovery: the model's last parameter has shape {last.shape}; expected a classification "
        f"layer with {num_classes} outputs"
    )


def class_softmax(module: Any, o: Observation, num_classes: int, public: Any) -> np.ndarray:
    """``P[c]``: the snapshot model's mean softmax over public records of class c (uniform where the
    public data has no record of c)."""
    import torch
    from torch.func import functional_call

    from invguard.federated.updates import module_params

    P = np.full((num_classes, num_classes), 1.0 / num_classes)
    if public is None or not len(public):
        return P
    params = {k: v.detach() for k, v in module_params(module, o.params).items()}
    with torch.no_grad():
        probs = torch.softmax(
            functional_call(module, params, (torch.as_tensor(public.X, dtype=torch.float32),)), dim=-1
        ).numpy()
    for c in range(num_classes):
        own = probs[public.y == c]
        if own.shape[0]:
            P[c] = own.mean(axis=0)
    return P


def recover_labels(module: Any, o: Observation, num_classes: int, public: Any) -> np.ndarray:
    """The labels of the ``o.batch_size`` records behind update ``o`` (a multiset, sorted)."""
    gW, gb = _last_layer(o, num_classes)
    B = int(o.batch_size)
    if B == 1:
        if gb is not None:
            return np.array([int(np.argmin(gb))])
        assert gW is not None
        return np.array([int(np.argmin(gW.sum(axis=1)))])
    if gb is None:  # Yin et al. 2021: the rows with the most negative entries, labels assumed unique
        assert gW is not None
        return np.sort(np.argsort(gW.min(axis=1))[:B])
    P = class_softmax(module, o, num_classes, public)
    A = (P - np.eye(num_classes)).T  # column c: what one record of class c adds to B * g_b
    target = B * gb
    counts = np.zeros(num_classes)
    for _ in range(B):
        resid = target[:, None] - (A @ counts)[:, None] - A  # try adding one record of each class
        c = int(np.argmin(np.sum(resid**2, axis=0)))
        counts[c] += 1
    return np.repeat(np.arange(num_classes), counts.astype(int))


@ATTACKS.register("gradient.labels")
@dataclass(frozen=True)
class LabelRecovery(GradientAttack):
    """Recover the labels of the records behind each observed update: iDLG at batch 1,
    count-based from the last layer's bias gradient beyond (see the module docstring)."""

    name: ClassVar[str] = "gradient.labels"
    strength: ClassVar[int] = 0
    fast_params: ClassVar[dict[str, Any]] = {"evaluator_epochs": 3}

    def _reconstruct(self, module, o, labels, shape, public, rng):  # type: ignore[no-untyped-def]
        return None, float("nan")
