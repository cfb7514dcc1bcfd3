"""Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019).

Minimise the squared L2 distance between the update of a dummy batch and the observed one with
L-BFGS. ``labels="joint"`` optimises soft dummy labels alongside the inputs, as in the paper;
``labels="recover"`` (the default) fixes them to the labels recovered analytically from the last
layer (iDLG; Zhao et al. 2020), which removes the label ambiguity that makes DLG fail. The inputs
are clamped to the data's box after each L-BFGS step. Unlike the cosine of Inverting Gradients,
the L2 objective depends on the update's scale: it needs the client's true local learning rate
for FedAvg deltas, and DP clipping biases it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.base import ATTACKS
from invguard.attacks.gradient.common import (
    GradientAttack,
    box_of,
    initial_inputs,
    observed_tensors,
    squared_distance,
)
from invguard.core.params import POSITIVE, Int, Options, Spec
from invguard.federated.updates import Observation, module_params


@ATTACKS.register("gradient.dlg")
@dataclass(frozen=True)
class DeepLeakage(GradientAttack):
    """L-BFGS on the L2 gradient-matching objective (see the module docstring). ``iterations``
    L-BFGS steps of up to ``inner`` function evaluations each, ``history`` curvature pairs,
    ``restarts`` random starts (the lowest objective is kept)."""

    name: ClassVar[str] = "gradient.dlg"
    strength: ClassVar[int] = 1
    fast_params: ClassVar[dict[str, Any]] = {"iterations": 5, "restarts": 1, "evaluator_epochs": 3}

    iterations: int = 50
    inner: int = 20
    history: int = 100
    lr: float = 1.0
    restarts: int = 2
    labels: str = "recover"

    constraints: ClassVar[Mapping[str, Spec]] = {
        "iterations": Int(1),
        "inner": Int(1),
        "history": Int(1),
        "lr": POSITIVE,
        "restarts": Int(1),
        "labels": Options("recover", "joint"),
    }

    def _reconstruct(
        self,
        module: Any,
        o: Observation,
        labels: np.ndarray,
        shape: tuple[int, ...],
        public: Any,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, float]:
        params = module_params(module, o.params)
        target = observed_tensors(o)
        box = box_of(public, shape)
        best, best_loss = None, float("inf")
        for _ in range(self.restarts):
            x, final = self._restart(module, params, o, target, labels, shape, box, rng)
            if final < best_loss or best is None:
                best, best_loss = x, final
        assert best is not None
        return best, best_loss

    def _restart(
        self,
        module: Any,
        params: Any,
        o: Observation,
        target: Any,
        labels: np.ndarray,
        shape: tuple[int, ...],
        box: tuple[float, float] | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, float]:
        import torch

        n = int(o.batch_size)
        x = initial_inputs(n, shape, box, rng).requires_grad_(True)
        variables = [x]
        if self.labels == "joint":
            C = int(np.asarray(o.update[-1]).shape[0])
            variables.append(
                torch.as_tensor(rng.standard_normal((n, C)), dtype=torch.float32).requires_grad_(True)
            )
        fixed = torch.as_tensor(labels, dtype=torch.long)
        opt = torch.optim.LBFGS(
            variables,
            lr=self.lr,
            max_iter=self.inner,
            history_size=self.history,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Any:
            opt.zero_grad()
            y = torch.softmax(variables[1], dim=-1) if self.labels == "joint" else fixed
            upd = o.replay(module, params, x, y, graph=True)
            loss = squared_distance(upd, target)
            grads = torch.autograd.grad(loss, variables)
            for v, g in zip(variables, grads, strict=True):
                v.grad = g
            return loss

        loss_value = float("inf")
        for _ in range(self.iterations):
            loss_value = float(opt.step(closure).detach())  # type: ignore[no-untyped-call]
            if box is not None:
                with torch.no_grad():
                    x.clamp_(box[0], box[1])
            if not np.isfinite(loss_value):
                break
        final = float(closure().detach()) if np.isfinite(loss_value) else float("inf")
        return x.detach().numpy().astype(np.float64), final
