"""Membership first, then inference on the most exposed records: the budget-limited attacker.

A realistic attacker cannot afford a full inversion of every record. It first runs a membership
attack over the candidates, keeps the ``top`` records it is most confident were trained on, and
spends its remaining effort on them:

- **tabular data**: Fredrikson-style MAP attribute inference of a sensitive column
  (:mod:`invguard.attacks.attribute.inference`);
- **images**: a seeded inversion that fills in a hidden region of the record (the attacker holds a
  partial record, e.g. a cropped or masked photo) by maximising the model's log-probability of the
  record's class over the hidden pixels, starting from the public class mean and with a total
  variation prior (Fredrikson et al. 2015's inversion by gradient ascent, restricted to the
  unknown pixels). With WHITEBOX access the gradient comes from the model; with SCORES it is
  estimated from queries with antithetic Gaussian sampling (NES, Ilyas et al. 2018).

Each top record is reported with what leaked (judged by :mod:`invguard.judges.hybrid`). The headline
is measured against the strongest attacker that uses no model: for tabular data the better of the
marginal guess and imputation from public data (Jayaraman & Evans 2022); for images the better of
the public class mean and a public-only inpainting (the hidden region of the ``neighbours`` public
images of the class closest on the visible region, averaged; Hays & Efros 2007, "Scene Completion
Using Millions of Photographs"). The same inference on as many randomly chosen candidates is the
control. A leak is rated "high" only when the model beats that baseline on the top records *and* the
membership ranking is what found them: the top records' advantage exceeds the random control's (a
two-sample bootstrap of the difference) and the share of members among them beats the members' base
rate (Wilson's lower bound). A model that beats public data but not through the ranking is rated
"medium"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.attribute.baseline import sensitive_column, tabular_splits
from invguard.attacks.attribute.inference import confusion_matrix, map_guess
from invguard.attacks.base import ATTACKS, Attack, RunContext
from invguard.attacks.membership.common import candidates_of, splits_of
from invguard.core.access import Access
from invguard.core.data import Splits
from invguard.core.errors import AccessError, ConfigError
from invguard.core.evidence import ExposedAttributes, ExposedRegions, RankedCandidates
from invguard.core.params import NON_NEGATIVE, POSITIVE, Dict, Int, Options, Spec, Text
from invguard.core.target import Target, unwrap

MASKS = ("bottom_half", "right_half", "centre")


def region_mask(shape: tuple[int, ...], kind: str) -> np.ndarray:
    """A 0/1 mask over ``(c, h, w)`` marking the pixels the attacker does not know."""
    m = np.zeros(shape, dtype=np.float32)
    h, w = shape[-2:]
    if kind == "bottom_half":
        m[..., h // 2 :, :] = 1
    elif kind == "right_half":
        m[..., :, w // 2 :] = 1
    else:
        m[..., h // 4 : h - h // 4, w // 4 : w - w // 4] = 1
    return m


@ATTACKS.register("hybrid.membership_attribute")
@dataclass(frozen=True)
class MembershipThenInference(Attack):
    """Membership inference, then attribute inference (tabular) or hidden-region inversion (images).

    ``membership``/``membership_params``: the membership attack that ranks the candidates;
    ``top``: records attacked; ``sensitive``/``bins``: the tabular column; ``mask``: the hidden
    image region (``bottom_half``, ``right_half``, ``centre``); ``steps``, ``lr``, ``tv`` (total
    variation weight), ``prior`` (weight of a Gaussian prior around the public class mean): the
    inversion; ``nes_samples``/``nes_sigma``: the query-only gradient estimate (SCORES access);
    ``neighbours``: public images averaged by the inpainting baseline.
    """

    name: ClassVar[str] = "hybrid.membership_attribute"
    requires: ClassVar[Access] = Access.LABEL
    strength: ClassVar[int] = 10
    fast_params: ClassVar[Mapping[str, Any]] = {"top": 10, "steps": 30, "n_boot": 300}
    data_kind: ClassVar[str] = "tabular"

    membership: str = "membership.threshold"
    membership_params: dict[str, Any] = field(default_factory=dict)
    top: int = 25
    sensitive: str = "sex"
    bins: int = 5
    mask: str = "bottom_half"
    steps: int = 100
    lr: float = 0.01
    tv: float = 0.02
    prior: float = 0.1
    nes_samples: int = 10
    nes_sigma: float = 0.02
    neighbours: int = 5
    n_boot: int = 1000

    def _membership_attack(self) -> Attack:
        if not self.membership.startswith("membership."):
            raise ConfigError(f"membership must name a membership attack, got {self.membership!r}")
        cls = ATTACKS.get(self.membership)
        return cls(**{"n_boot": 0, **self.membership_params})

    constraints: ClassVar[Mapping[str, Spec]] = {
        "membership": Text(),
        "membership_params": Dict(),
        "top": Int(2),
        "sensitive": Text(),
        "bins": Int(2),
        "mask": Options(*MASKS),
        "steps": Int(1),
        "lr": POSITIVE,
        "tv": NON_NEGATIVE,
        "prior": NON_NEGATIVE,
        "nes_samples": Int(1),
        "nes_sigma": POSITIVE,
        "neighbours": Int(1),
        "n_boot": Int(0),
    }

    def cross_checks(self) -> list[str]:
        try:
            self._membership_attack()
        except (ConfigError, TypeError) as e:
            return [f"membership attack {self.membership!r}: {e}"]
        return []

    def required_access(self, target: Target) -> Access:
        return self._membership_attack().required_access(target)

    def search(
        self, target: Target, data: Splits, rng: np.random.Generator, ctx: RunContext
    ) -> RankedCandidates:
        splits = splits_of(data, self.name)
        image = splits.dataset.kind == "image"
        if image and target.access < Access.SCORES:
            raise AccessError(
                f"{self.name}: inverting a hidden image region needs SCORES; "
                f"this target grants {target.describe()}"
            )
        col = None
        if not image:
            col = sensitive_column(tabular_splits(splits, self.name), self.sensitive, self.bins, self.name)
        seed = int(rng.integers(2**31))
        mres = self._membership_attack().run(target, splits, seed=seed, context=ctx)
        cand = candidates_of(splits)
        scores = np.asarray(mres.arrays["scores"], dtype=np.float64)
        k = min(self.top, len(cand) // 2)
        top = np.argsort(-scores, kind="mergesort")[:k]
        control = rng.permutation(len(cand))[:k]
        rows = np.r_[top, control]
        X, y = cand.X[rows], cand.y[rows]
        ranked: dict[str, Any] = {
            "scores": scores,
            "is_member": cand.is_member,
            "indices": cand.indices,
            "labels": cand.y,
            "top": top,
            "control": control,
            "membership_metrics": dict(mres.metrics),
            "info": {
                "membership_attack": self.membership,
                "top": int(k),
                "membership_findings": [f.title for f in mres.findings],
            },
        }
        if col is None:
            mask = region_mask(tuple(X.shape[1:]), self.mask)
            pub = splits.public
            means = np.stack(
                [
                    pub.X[pub.y == c].mean(0) if np.any(pub.y == c) else pub.X.mean(0)
                    for c in range(target.num_classes)
                ]
            )
            recon = self._invert(target, X * (1 - mask), y, mask, means[y], seed)
            ranked["info"].update(
                mask=self.mask, gradient="model" if target.access >= Access.WHITEBOX else "NES from scores"
            )
            return ExposedRegions(X=X, y=y, mask=mask, reconstructions=recon, **ranked)
        pub = splits.public
        log_prior = np.log(col.prior(pub.X))
        confusion = (
            None
            if target.access >= Access.SCORES
            else confusion_matrix(target, pub.X, pub.y, target.num_classes)
        )
        guess = map_guess(target, col, X, y, log_prior, confusion)
        return ExposedAttributes(column=col, X=X, y=y, truth=col.value_of(X), guess=guess, **ranked)

    def _invert(
        self, target: Any, known: np.ndarray, y: np.ndarray, mask: np.ndarray, init: np.ndarray, seed: int
    ) -> np.ndarray:
        import torch

        m = torch.from_numpy(mask)
        kn = torch.from_numpy(known.astype(np.float32))
        h = torch.tensor(init.astype(np.float32), requires_grad=True)
        start = torch.from_numpy(init.astype(np.float32))
        opt = torch.optim.Adam([h], lr=self.lr)
        yt = torch.from_numpy(y.astype(np.int64))
        wb = unwrap(target).whitebox
        gen = np.random.default_rng(seed)
        rows = np.arange(len(y))

        def tv(x: torch.Tensor) -> torch.Tensor:
            return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
                x[..., :, 1:] - x[..., :, :-1]
            ).abs().mean()

        for _ in range(self.steps):
            opt.zero_grad()
            x = kn + m * h.clamp(0, 1)
            loss = (self.tv * tv(x) + self.prior * ((x - start) ** 2 * m).sum() / m.sum()) * len(y)
            if wb is not None:
                logp = torch.log_softmax(wb.forward(x), dim=1)[rows, yt]
                loss = loss - logp.sum()
                loss.backward()  # type: ignore[no-untyped-call]
            else:
                loss.backward()  # type: ignore[no-untyped-call]
                base = x.detach().numpy()
                g = np.zeros_like(base)
                for _ in range(self.nes_samples):
                    u = gen.normal(size=base.shape).astype(np.float32) * mask
                    plus = target.predict(np.clip(base + self.nes_sigma * u, 0, 1))
                    minus = target.predict(np.clip(base - self.nes_sigma * u, 0, 1))
                    fp = np.log(np.clip(_probs(plus)[rows, y], 1e-12, None))
                    fm = np.log(np.clip(_probs(minus)[rows, y], 1e-12, None))
                    g += ((fp - fm) / (2 * self.nes_sigma))[:, None, None, None] * u
                g /= self.nes_samples
                assert h.grad is not None
                h.grad -= torch.from_numpy(g)
            opt.step()
            with torch.no_grad():
                h.clamp_(0, 1)
        out: np.ndarray = (kn + m * h.detach()).numpy()
        return out


def _probs(pred: Any) -> np.ndarray:
    p: np.ndarray | None = pred.probabilities()
    if p is None:
        raise AccessError("hidden-region inversion needs scores; the target answered labels only")
    return p
