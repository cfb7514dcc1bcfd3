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

Each top record is reported with what leaked. The headline is measured against the strongest
attacker that uses no model: for tabular data the better of the marginal guess and imputation from
public data (Jayaraman & Evans 2022); for images the better of the public class mean and a
public-only inpainting (the hidden region of the ``neighbours`` public images of the class closest on
the visible region, averaged; Hays & Efros 2007, "Scene Completion Using Millions of Photographs").
The same inference on as many randomly chosen candidates is the control. A leak is rated "high"
only when the model beats that baseline on the top records *and* the membership ranking is what
found them: the top records' advantage exceeds the random control's (a two-sample bootstrap of
the difference) and the share of members among them beats the members' base rate (Wilson's lower
bound). A model that beats public data but not through the ranking is rated "medium".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from invguard.attacks.attribute.baseline import (
    baseline_guess,
    correct_array,
    sensitive_column,
    tabular_splits,
)
from invguard.attacks.attribute.inference import (
    advantage_metric,
    confusion_matrix,
    map_guess,
    strongest_baseline,
)
from invguard.attacks.base import ATTACKS, Attack, AttackOutput, RunContext
from invguard.attacks.membership.common import candidates_of, splits_of
from invguard.core.access import Access
from invguard.core.errors import AccessError, ConfigError
from invguard.core.result import Finding, Metric
from invguard.core.target import Target
from invguard.metrics.stats import bootstrap_metric, proportion_metric

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

    def validate(self) -> list[str]:
        p = []
        try:
            self._membership_attack()
        except (ConfigError, TypeError) as e:
            p.append(f"membership attack {self.membership!r}: {e}")
        if self.top < 2:
            p.append(f"top must be >= 2, got {self.top}")
        if self.mask not in MASKS:
            p.append(f"mask must be one of {list(MASKS)}, got {self.mask!r}")
        if self.steps < 1:
            p.append(f"steps must be >= 1, got {self.steps}")
        if self.nes_samples < 1 or self.nes_sigma <= 0:
            p.append("nes_samples must be >= 1 and nes_sigma > 0")
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 1:
            p.append(f"neighbours must be an integer >= 1, got {self.neighbours!r}")
        return p

    def required_access(self, target: Target) -> Access:
        return self._membership_attack().required_access(target)

    def _run(self, target: Target, data: Any, rng: np.random.Generator, ctx: RunContext) -> AttackOutput:
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
        precision = proportion_metric(
            int(cand.is_member[top].sum()), k, description="share of the top-ranked records that are members"
        )
        base_rate = float(np.mean(cand.is_member))
        base = {
            "top_precision": precision,
            "member_base_rate": Metric(
                base_rate, description="share of members among all candidates (what a random pick gets)"
            ),
            "membership_auc": mres.metrics.get("auc", Metric(float("nan"))),
        }
        ranked = precision.low is not None and precision.low > base_rate
        if image:
            out = self._images(target, splits, cand, top, control, scores, seed, ranked)
        else:
            out = self._tabular(target, splits, col, cand, top, control, scores, seed, ranked)
        out.metrics = {**base, **out.metrics}
        out.info.update(
            {
                "membership_attack": self.membership,
                "top": int(k),
                "membership_findings": [f.title for f in mres.findings],
            }
        )
        return out

    # ---------------------------------------------------------------------------------------- tabular

    def _tabular(self, target, splits, col, cand, top, control, scores, seed, ranked) -> AttackOutput:  # type: ignore[no-untyped-def]
        pub = splits.public
        log_prior = np.log(col.prior(pub.X))
        confusion = (
            None
            if target.access >= Access.SCORES
            else confusion_matrix(target, pub.X, pub.y, target.num_classes)
        )
        rows = np.r_[top, control]
        X, y = cand.X[rows], cand.y[rows]
        truth = col.value_of(X)
        guess = map_guess(target, col, X, y, log_prior, confusion)
        guesses = {m: baseline_guess(m, col, pub, X, y, seed) for m in ("marginal", "imputation")}
        strongest = strongest_baseline(truth, guesses)
        k = top.size
        c = correct_array(guess, truth)
        b = correct_array(guesses[strongest], truth)
        nb = self.n_boot
        metrics = {
            "accuracy": bootstrap_metric(
                np.mean, c[:k], n_boot=nb, seed=seed, description="MAP accuracy, top records"
            ),
            "baseline_accuracy": bootstrap_metric(
                np.mean,
                b[:k],
                n_boot=nb,
                seed=seed,
                description=f"{strongest} baseline (the stronger no-model attacker), top records",
            ),
            "advantage": advantage_metric(
                c[:k], b[:k], nb, seed, f"accuracy minus the {strongest} baseline's, top records"
            ),
            "control_advantage": advantage_metric(
                c[k:], b[k:], nb, seed, "the same on random candidates (control)"
            ),
            "top_vs_control": difference_metric(
                c[:k] - b[:k],
                c[k:] - b[k:],
                nb,
                seed,
                "advantage on the top records minus on the random control (> 0: the ranking finds the "
                "records that leak)",
            ),
        }
        table = [
            {
                "rank": r + 1,
                "index": int(cand.indices[i]),
                "class": int(cand.y[i]),
                "membership_score": float(scores[i]),
                "is_member": int(cand.is_member[i]),
                "true_value": col.labels[int(truth[r])],
                "inferred_value": col.labels[int(guess[r])],
                "leaked": bool(c[r]),
            }
            for r, i in enumerate(top)
        ]
        adv = metrics["advantage"]
        leak = adv.low is not None and adv.low > 0
        findings = [
            Finding(
                f"{col.name} of the most exposed records",
                f"Of the {k} records membership inference ranks most exposed "
                f"({int(cand.is_member[top].sum())} truly members), the model gives away {col.name} for "
                f"{int(c[:k].sum())}: advantage {adv:.3f} over the {strongest} guess (the stronger attacker "
                f"without the model); on random candidates {metrics['control_advantage']:.3f}. "
                + _verdict(leak, ranked, metrics["top_vs_control"]),
                _severity(leak, ranked, metrics["top_vs_control"]),
            )
        ]
        return AttackOutput(
            metrics=metrics,
            tables={"records": table},
            findings=findings,
            info={"sensitive": col.name, "baseline": strongest},
        )

    # ----------------------------------------------------------------------------------------- images

    def _images(self, target, splits, cand, top, control, scores, seed, ranked) -> AttackOutput:  # type: ignore[no-untyped-def]
        rows = np.r_[top, control]
        X, y = cand.X[rows], cand.y[rows]
        mask = region_mask(tuple(X.shape[1:]), self.mask)
        pub = splits.public
        means = np.stack(
            [
                pub.X[pub.y == c].mean(0) if np.any(pub.y == c) else pub.X.mean(0)
                for c in range(target.num_classes)
            ]
        )
        init = means[y]
        recon = self._invert(target, X * (1 - mask), y, mask, init, seed)
        hidden = mask.astype(bool)
        inpaint = public_inpainting(pub.X, pub.y, X * (1 - mask), y, mask, self.neighbours)
        err = ((recon - X) ** 2)[:, hidden].mean(1)
        mean_err = ((init - X) ** 2)[:, hidden].mean(1)
        nn_err = ((inpaint - X) ** 2)[:, hidden].mean(1)
        # the stronger no-model attacker on these records (lower hidden-region MSE overall)
        strongest = "public inpainting" if nn_err.mean() <= mean_err.mean() else "public class mean"
        base_err = nn_err if strongest == "public inpainting" else mean_err
        k = top.size
        nb = self.n_boot

        def mse(v: np.ndarray, d: str) -> Metric:
            return bootstrap_metric(np.mean, v, n_boot=nb, seed=seed, higher_is_worse=False, description=d)

        metrics = {
            "reconstruction_mse": mse(err[:k], "MSE of the hidden region, top records"),
            "baseline_mse": mse(
                base_err[:k], f"MSE of the {strongest} (the stronger no-model attacker) on the hidden region"
            ),
            "class_mean_mse": mse(mean_err[:k], "MSE of the public class mean on the hidden region"),
            "inpainting_mse": mse(
                nn_err[:k],
                f"MSE of the mean hidden region of the {self.neighbours} public images of the class closest "
                "on the visible region",
            ),
            "improvement": advantage_metric(
                base_err[:k],
                err[:k],
                nb,
                seed,
                f"{strongest} MSE minus inversion MSE, top records (> 0: the model leaks beyond public data)",
            ),
            "improvement_over_class_mean": advantage_metric(
                mean_err[:k], err[:k], nb, seed, "public class mean MSE minus inversion MSE, top records"
            ),
            "improvement_over_inpainting": advantage_metric(
                nn_err[:k], err[:k], nb, seed, "public inpainting MSE minus inversion MSE, top records"
            ),
            "control_improvement": advantage_metric(
                base_err[k:], err[k:], nb, seed, "the same on random candidates (control)"
            ),
            "top_vs_control": difference_metric(
                base_err[:k] - err[:k],
                base_err[k:] - err[k:],
                nb,
                seed,
                "improvement on the top records minus on the random control (> 0: the ranking finds the "
                "records that leak)",
            ),
        }
        table = [
            {
                "rank": r + 1,
                "index": int(cand.indices[i]),
                "class": int(cand.y[i]),
                "membership_score": float(scores[i]),
                "is_member": int(cand.is_member[i]),
                "hidden_mse": float(err[r]),
                "baseline_mse": float(base_err[r]),
                "class_mean_mse": float(mean_err[r]),
                "inpainting_mse": float(nn_err[r]),
                "leaked": bool(err[r] < base_err[r]),
            }
            for r, i in enumerate(top)
        ]
        imp = metrics["improvement"]
        leak = imp.low is not None and imp.low > 0
        findings = [
            Finding(
                "Hidden regions of the most exposed images",
                f"Seeded inversion fills the hidden {self.mask.replace('_', ' ')} of the {k} most exposed "
                f"records with MSE {metrics['reconstruction_mse']:.4f} vs "
                f"{metrics['baseline_mse']:.4f} for the {strongest} (the stronger attacker without the "
                f"model; public class mean {metrics['class_mean_mse']:.4f}): improvement {imp:.4f}; "
                f"on random candidates {metrics['control_improvement']:.4f}. "
                + _verdict(leak, ranked, metrics["top_vs_control"]),
                _severity(leak, ranked, metrics["top_vs_control"]),
            )
        ]
        return AttackOutput(
            metrics=metrics,
            arrays={"originals": X[:k], "reconstructions": recon[:k], "mask": mask},
            tables={"records": table},
            findings=findings,
            info={
                "mask": self.mask,
                "gradient": "model" if target.access >= Access.WHITEBOX else "NES from scores",
                "baseline": strongest,
            },
        )

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
        whitebox = target.access >= Access.WHITEBOX
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
            if whitebox:
                logp = torch.log_softmax(target.forward(x), dim=1)[rows, yt]
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


def public_inpainting(
    pub_X: np.ndarray, pub_y: np.ndarray, known: np.ndarray, y: np.ndarray, mask: np.ndarray, neighbours: int
) -> np.ndarray:
    """A no-model attacker: per record, average the ``neighbours`` public images of its class closest
    on the visible region (squared L2) and take their hidden region; the visible part is kept."""
    vis = (1 - mask).astype(bool)
    out = np.array(known, dtype=np.float64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        pool = pub_X[pub_y == c] if np.any(pub_y == c) else pub_X
        a = known[rows][:, vis].astype(np.float64)
        b = pool[:, vis].astype(np.float64)
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        near = np.argsort(d, axis=1, kind="stable")[:, : min(neighbours, pool.shape[0])]
        fill = pool[near].mean(axis=1)
        out[rows] = out[rows] * (1 - mask) + fill * mask
    return out


def difference_metric(
    top: np.ndarray, control: np.ndarray, n_boot: int, seed: int, description: str
) -> Metric:
    """Mean of ``top`` minus mean of ``control`` (independent samples, each resampled on its own)."""
    values = np.r_[top, control]
    group = np.r_[np.ones(top.size, np.int64), np.zeros(control.size, np.int64)]
    return bootstrap_metric(
        lambda v, g: float(np.mean(v[g == 1]) - np.mean(v[g == 0])),
        values,
        group,
        n_boot=n_boot,
        seed=seed,
        stratify=list(group),
        description=description,
    )


def _severity(leak: bool, ranked: bool, top_vs_control: Metric) -> str:
    targeted = ranked and top_vs_control.low is not None and top_vs_control.low > 0
    return "high" if leak and targeted else "medium" if leak else "info"


def _verdict(leak: bool, ranked: bool, top_vs_control: Metric) -> str:
    if not leak:
        return "No leak beyond what public data gives an attacker without the model."
    why = []
    if not ranked:
        why.append("the top records are not members more often than a random pick")
    if top_vs_control.low is None or top_vs_control.low <= 0:
        why.append(f"they leak no more than random candidates (difference {top_vs_control:.4f})")
    if why:
        return "The model leaks beyond public data, but the membership ranking does not pick the exposed " + (
            "records: " + "; ".join(why) + "."
        )
    return (
        f"The membership ranking finds the records that leak: they beat the random control by "
        f"{top_vs_control:.4f} and are members more often than chance."
    )


def _probs(pred: Any) -> np.ndarray:
    from invguard.policies.base import probabilities

    p = probabilities(pred)
    if p is None:
        raise AccessError("hidden-region inversion needs scores; the target answered labels only")
    return p
