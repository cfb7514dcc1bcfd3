"""Analytic input recovery through a fully connected first layer (Phong et al., "Privacy-Preserving
Deep Learning via Additively Homomorphic Encryption", 2017; Geiping et al. 2020, proposition D.1;
Fowl et al., "Robbing the Fed", ICLR 2022).

For ``z = W x + b`` the gradients are ``dW_j = sum_n d_nj x_n`` and ``db_j = sum_n d_nj`` (with
``d_nj = dL/dz_nj``), so a row ``dW_j / db_j`` is a weighted mean of the batch's inputs. At batch
1 every row with ``db_j != 0`` is the input itself, exactly (solved here by least squares over all
rows). At batch B, a unit that only one record activates (ReLU zeroes the others' ``d_nj``) gives
that record exactly, and so does every other unit it alone activates: rows that coincide are
recovered inputs, while mixtures of several records almost never coincide. The attack returns
the distinct repeated rows, most repeated first; where fewer than B are found the rest of the
batch is filled with the public mean (the no-model baseline, so a miss is not credited). For a
FedAvg delta at batch 1 the ratio is still exact (every local step adds a multiple of the same
input to each row); at larger batches the mixtures drift with the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS
from invguard.attacks.gradient.common import GradientAttack
from invguard.core.errors import ConfigError
from invguard.core.params import NON_NEGATIVE, POSITIVE, Spec
from invguard.federated.updates import Observation


def first_linear(o: Observation, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight update (H, D), bias update (H,)) of a fully connected first layer."""
    if len(o.update) < 2:
        raise ConfigError("gradient.analytic: the model has fewer than two parameter arrays")
    W, b = (np.asarray(u, dtype=np.float64) for u in o.update[:2])
    if W.ndim != 2 or b.ndim != 1 or W.shape != (b.shape[0], input_size):
        raise ConfigError(
            "gradient.analytic needs a fully connected first layer with a bias (weight of shape "
            f"(units, {input_size}) then bias); this model's first parameters have shapes "
            f"{W.shape} and {b.shape}: use gradient.inverting"
        )
    return W, b


def linear_inputs(module: Any, o: Observation, min_bias: float = 1e-4) -> list[tuple[str, np.ndarray]]:
    """At batch 1, the input of every fully connected layer with a bias, recovered from its update
    (``(db . dW) / (db . db)`` over the rows with a non-negligible bias update), input side first.
    For a CNN this is the flattened feature map its head receives; FedSGD gradients only (a FedAvg
    delta mixes the features of several parameter states)."""
    import torch

    if o.batch_size != 1 or o.kind != "gradient":
        return []
    index = {n: i for i, n in enumerate(o.names)}
    out = []
    for name, sub in module.named_modules():
        if not isinstance(sub, torch.nn.Linear) or sub.bias is None:
            continue
        wi, bi = index.get(f"{name}.weight"), index.get(f"{name}.bias")
        if wi is None or bi is None:
            continue
        W = np.asarray(o.update[wi], dtype=np.float64)
        b = np.asarray(o.update[bi], dtype=np.float64)
        keep = np.abs(b) > min_bias * max(float(np.abs(b).max()), 1e-300)
        if keep.any():
            out.append((name, (b[keep] @ W[keep]) / float(b[keep] @ b[keep])))
    return out


@ATTACKS.register("gradient.analytic")
@dataclass(frozen=True)
class AnalyticRecovery(GradientAttack):
    """Exact recovery through a fully connected first layer (see the module docstring).
    ``tolerance``: relative distance under which two rows are the same input; ``min_bias``: rows
    whose bias update is below this fraction of the largest are ignored (numerical noise)."""

    name: ClassVar[str] = "gradient.analytic"
    strength: ClassVar[int] = 3
    fast_params: ClassVar[dict[str, Any]] = {"evaluator_epochs": 3}

    tolerance: float = 1e-3
    min_bias: float = 1e-4

    constraints: ClassVar[Mapping[str, Spec]] = {"tolerance": POSITIVE, "min_bias": NON_NEGATIVE}

    def _reconstruct(
        self,
        module: Any,
        o: Observation,
        labels: np.ndarray,
        shape: tuple[int, ...],
        public: Any,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, float]:
        D = int(np.prod(shape))
        W, b = first_linear(o, D)
        n = int(o.batch_size)
        keep = np.abs(b) > self.min_bias * max(float(np.abs(b).max()), 1e-300)
        if not keep.any():
            return self._fill(np.zeros((0, D)), n, shape, public), float("inf")
        if n == 1:
            x = (b[keep] @ W[keep]) / float(b[keep] @ b[keep])
            resid = float(np.linalg.norm(W[keep] - np.outer(b[keep], x)) / (np.linalg.norm(W[keep]) + 1e-300))
            return x.reshape(1, *shape), resid
        rows = W[keep] / b[keep][:, None]
        order = np.argsort(-np.abs(b[keep]))
        centres: list[np.ndarray] = []
        sizes: list[int] = []
        for i in order:
            r = rows[i]
            for k, c in enumerate(centres):
                if np.linalg.norm(r - c) <= self.tolerance * max(float(np.linalg.norm(c)), 1e-12):
                    sizes[k] += 1
                    break
            else:
                centres.append(r)
                sizes.append(1)
        found = [centres[k] for k in np.argsort(-np.asarray(sizes), kind="stable") if sizes[k] >= 2][:n]
        recovered = np.asarray(found).reshape(len(found), D) if found else np.zeros((0, D))
        return self._fill(recovered, n, shape, public), float(n - len(found))

    @staticmethod
    def _fill(recovered: np.ndarray, n: int, shape: tuple[int, ...], public: Any) -> np.ndarray:
        out = np.empty((n, *shape))
        out[: recovered.shape[0]] = recovered.reshape(-1, *shape)
        if recovered.shape[0] < n:
            mean = public.X.mean(axis=0) if public is not None and len(public) else np.zeros(shape)
            out[recovered.shape[0] :] = mean
        return out
