"""Inverting Gradients (Geiping, Bauermeister, Droege & Moeller, "Inverting Gradients - How easy is
it to break privacy in federated learning?", NeurIPS 2020).

Find inputs whose update, computed from the same model snapshot with the recovered labels, points
the same way as the observed one: minimise ``1 - cos(update(x), observed) + tv * TV(x)`` with Adam
on the *signed* gradient, inside the data's box, the step size divided by 10 at 3/8, 5/8 and 7/8
of the iterations; ``restarts`` random starts, keeping the one with the lowest objective (never
judged by the truth). For a FedAvg delta the ``local_steps`` SGD steps are unrolled
differentiably on the dummy batch, mini-batch by mini-batch as the client took them (the paper's
section 6). The cosine is invariant to the update's scale, so the unknown local learning rate of a
delta costs only its direction, and DP clipping changes nothing.

Beyond the paper (``features`` > 0): at batch 1 the input of a fully connected layer is exact in
its gradient (:func:`~invguard.attacks.gradient.analytic.linear_inputs`; Geiping et al.,
proposition D.1), so for a CNN the flattened feature map its head received is known. The attack
then also matches the dummy's features at that layer, ``features * ||h(x) - h||^2 / ||h||^2``:
a far better conditioned target than the gradient alone. ``polish`` L-BFGS steps then refine the
Adam result on the same objective without the TV prior (which biases an exact solution): Adam
finds the basin, L-BFGS its bottom, which is what makes a 28x28 reconstruction exact rather than
merely recognisable.
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
    cosine_distance,
    initial_inputs,
    observed_tensors,
    total_variation,
)
from invguard.core.params import NON_NEGATIVE, POSITIVE, Int, Spec
from invguard.federated.updates import Observation, module_params


@ATTACKS.register("gradient.inverting")
@dataclass(frozen=True)
class InvertingGradients(GradientAttack):
    """Cosine gradient matching with total variation (see the module docstring). ``iterations``
    Adam steps at ``lr``; ``tv`` weight; ``restarts`` random starts per update."""

    name: ClassVar[str] = "gradient.inverting"
    strength: ClassVar[int] = 2
    fast_params: ClassVar[dict[str, Any]] = {"iterations": 60, "restarts": 1, "evaluator_epochs": 3}

    iterations: int = 1000
    lr: float = 0.1
    tv: float = 1e-2
    restarts: int = 2
    features: float = 1.0
    polish: int = 20

    constraints: ClassVar[Mapping[str, Spec]] = {
        "iterations": Int(1),
        "lr": POSITIVE,
        "tv": NON_NEGATIVE,
        "restarts": Int(1),
        "features": NON_NEGATIVE,
        "polish": Int(0),
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
        import torch

        params = module_params(module, o.params)
        target = observed_tensors(o)
        y = torch.as_tensor(labels, dtype=torch.long)
        box = box_of(public, shape)
        n = int(o.batch_size)
        feat = self._feature_target(module, o)
        best, best_loss = None, float("inf")
        milestones = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        for _ in range(self.restarts):
            x = initial_inputs(n, shape, box, rng).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=self.lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
            for _ in range(self.iterations):
                opt.zero_grad()
                upd = o.replay(module, params, x, y, graph=True)
                loss = cosine_distance(upd, target) + self.tv * total_variation(x)
                if feat is not None:
                    loss = loss + self.features * feat(params, x)
                (gx,) = torch.autograd.grad(loss, [x])
                x.grad = gx.sign()
                opt.step()
                sched.step()
                if box is not None:
                    with torch.no_grad():
                        x.clamp_(box[0], box[1])
            if self.polish:
                x = self._polish(module, params, x.detach(), y, o, target, feat, box)
            final = self._objective(module, params, x.detach(), y, o, target, feat)
            if final < best_loss:
                best, best_loss = x.detach().clone(), final
        assert best is not None
        return best.numpy().astype(np.float64), best_loss

    def _polish(
        self, module: Any, params: Any, x0: Any, y: Any, o: Observation, target: Any, feat: Any, box: Any
    ) -> Any:
        """``polish`` L-BFGS steps on cosine (+ features) from ``x0``, inside the box."""
        import torch

        x = x0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=20, history_size=100, line_search_fn="strong_wolfe")

        def closure() -> Any:
            opt.zero_grad()
            upd = o.replay(module, params, x, y, graph=True)
            loss = cosine_distance(upd, target)
            if feat is not None:
                loss = loss + self.features * feat(params, x)
            (x.grad,) = torch.autograd.grad(loss, [x])
            return loss

        for _ in range(self.polish):
            value = float(opt.step(closure).detach())  # type: ignore[no-untyped-call]
            if box is not None:
                with torch.no_grad():
                    x.clamp_(box[0], box[1])
            if not np.isfinite(value):
                return x0
        return x.detach()

    def _feature_target(self, module: Any, o: Observation) -> Any:
        """``f(params, x)``: the normalised squared distance of x's features to the recovered ones at
        the first fully connected layer behind the input (None where nothing applies)."""
        import torch
        from torch.func import functional_call

        from invguard.attacks.gradient.analytic import linear_inputs

        if self.features <= 0:
            return None
        found = [(n, h) for n, h in linear_inputs(module, o) if n != self._input_layer(module)]
        if not found:
            return None
        name, h = found[0]
        sub = module.get_submodule(name)
        want = torch.as_tensor(h, dtype=torch.float32)
        scale = float(torch.sum(want * want)) + 1e-12

        def f(params: Any, x: Any) -> Any:
            seen: list[Any] = []
            handle = sub.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
            try:
                functional_call(module, params, (x,))
            finally:
                handle.remove()
            return torch.sum((seen[0].reshape(-1) - want) ** 2) / scale

        return f

    @staticmethod
    def _input_layer(module: Any) -> str | None:
        """The name of the first parameterised module if it is a fully connected layer (an MLP's input
        layer, where the analytic attack already applies), else None."""
        import torch

        for name, sub in module.named_modules():
            if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)):
                return name if isinstance(sub, torch.nn.Linear) else None
        return None

    def _objective(
        self, module: Any, params: Any, x: Any, y: Any, o: Observation, target: Any, feat: Any
    ) -> float:
        """The attack's own score of a candidate (what restarts are chosen by; never the truth)."""
        import torch

        x = x.clone().requires_grad_(True)
        upd = o.replay(module, params, x, y)
        with torch.no_grad():
            value = cosine_distance(upd, target)
            if feat is not None:
                value = value + self.features * feat(params, x)
            return float(value)
