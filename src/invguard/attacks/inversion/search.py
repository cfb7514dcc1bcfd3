"""Search engines shared by the inversion attacks.

- :func:`gradient_search`: white-box optimisation through the target's gradients with a *capped*
  class objective (a hinge on the logit margin: once the target is confident the image priors take
  over), random jitter, restarts and early stopping (Fredrikson et al., CCS 2015; Mahendran &
  Vedaldi, CVPR 2015).
- :func:`nes_search`: the same objective with natural-evolution-strategy gradient estimates using
  antithetic samples (Wierstra et al., JMLR 2014; Ilyas et al., "Black-box Adversarial Attacks with
  Limited Queries and Information", ICML 2018) under a query budget.
- :func:`brep_search`: boundary-repelling search from predicted labels only (Kahla et al.,
  "Label-Only Model Inversion Attacks via Boundary Repulsion", CVPR 2022).

All queries go through a :class:`Meter`, which never lets an attack spend more than its allowance or
the target's remaining budget: a search stops *before* a batch that would not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from invguard.attacks.inversion.priors import Space
from invguard.core.errors import AccessError
from invguard.core.target import Prediction, Target, WhiteBox, softmax, unwrap


class OutOfQueries(Exception):
    """Internal: the next batch would exceed the attack's allowance or the target's budget."""


def budget_left(target: Target) -> int | None:
    """Queries left before any budget along a chain of wrapped targets (policy wrappers, ...) runs out."""
    return unwrap(target).queries_left()


class Meter:
    """Counts an attack's queries against its own allowance and the target's budget."""

    def __init__(self, target: Target, allowance: int | None) -> None:
        self.target = target
        self.allowance = allowance
        self.spent = 0

    def left(self) -> int | None:
        lefts = []
        if self.allowance is not None:
            lefts.append(self.allowance - self.spent)
        outer = budget_left(self.target)
        if outer is not None:
            lefts.append(outer)
        return None if not lefts else max(0, min(lefts))

    def whitebox(self) -> WhiteBox:
        """The target's white-box capability (AccessError when it grants less)."""
        wb = unwrap(self.target).whitebox
        if wb is None:
            raise AccessError(
                f"gradient search needs WHITEBOX access; this target grants {self.target.describe()}"
            )
        return wb

    def can(self, n: int) -> bool:
        left = self.left()
        return left is None or n <= left

    def predict(self, x: np.ndarray) -> Prediction:
        n = int(x.shape[0])
        if not self.can(n):
            raise OutOfQueries
        pred = self.target.predict(x)
        self.spent += n
        return pred

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        if not self.can(n):
            raise OutOfQueries
        out: torch.Tensor = self.whitebox().forward(x)
        self.spent += n
        return out


def margins(
    pred: Prediction, classes: np.ndarray, eps: float = 1e-6, *, labels_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(margin, confidence) of each row for its class.

    Margin: logit of the class minus the best other logit (log-scores when only scores are given;
    +-1 from labels alone). Confidence: the class probability (1/0 from labels alone).
    ``labels_only``: use the predicted labels even when the target also returned scores or logits
    (a label-only attack must not benefit from what it claims not to use).
    """
    rows = np.arange(len(classes))
    if labels_only:
        hit = (pred.labels == classes).astype(np.float64)
        return 2 * hit - 1, hit
    if pred.logits is not None:
        z = np.asarray(pred.logits, dtype=np.float64)
        conf = softmax(z)[rows, classes]
    elif pred.scores is not None:
        p = np.asarray(pred.scores, dtype=np.float64)
        z = np.log(np.clip(p, 0.0, None) + eps)
        conf = p[rows, classes]
    else:
        hit = (pred.labels == classes).astype(np.float64)
        return 2 * hit - 1, hit
    own = z[rows, classes]
    other = z.copy()
    other[rows, classes] = -np.inf
    return own - other.max(axis=1), conf


@dataclass
class SearchState:
    """Parameters, images and what the target said about them, one row per trajectory."""

    theta: np.ndarray
    images: np.ndarray
    margin: np.ndarray
    confidence: np.ndarray


def _roll(x: torch.Tensor, jitter: int, rng: np.random.Generator) -> torch.Tensor:
    if jitter <= 0 or x.dim() != 4:
        return x
    dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def gradient_search(
    meter: Meter,
    space: Space,
    classes: np.ndarray,
    theta0: np.ndarray,
    *,
    steps: int,
    lr: float,
    margin_cap: float,
    jitter: int,
    rng: np.random.Generator,
    restarts: int = 1,
    patience: int = 50,
) -> SearchState:
    """Minimise ``relu(margin_cap - margin) + prior`` by Adam through the target's gradients.

    ``theta0`` holds ``restarts`` consecutive rows per trajectory; the best restart (highest capped
    margin minus prior, measured without jitter) is kept.
    """
    cls_t = torch.as_tensor(np.repeat(classes, restarts), dtype=torch.long)
    theta = torch.tensor(np.asarray(theta0, dtype=np.float32), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    rows = torch.arange(theta.shape[0])
    best_loss, since = float("inf"), 0
    try:
        for _ in range(steps):
            x = space.decode_t(theta)
            z = meter.forward(_roll(x, jitter, rng))
            own = z[rows, cls_t]
            other = z.masked_fill(torch.nn.functional.one_hot(cls_t, z.shape[1]).bool(), -1e9).amax(dim=1)
            per_row = torch.relu(margin_cap - (own - other)) + space.penalty_t(theta, x)
            loss = per_row.sum()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            space.project(theta)
            value = float(loss.detach())
            if not np.isfinite(best_loss) or value < best_loss - 1e-4 * max(1.0, abs(best_loss)):
                best_loss, since = value, 0
            else:
                since += 1
                if since >= patience:
                    break
    except OutOfQueries:
        pass
    th = theta.detach().numpy().astype(np.float64)
    images = space.decode(th)
    try:
        pred = meter.predict(images)
        m, conf = margins(pred, np.repeat(classes, restarts))
    except OutOfQueries:  # no query left to check: nothing is known to have converged
        m, conf = np.full(th.shape[0], -np.inf), np.zeros(th.shape[0])
    fitness = np.minimum(m, margin_cap) - space.penalty(th, images)
    pick = fitness.reshape(-1, restarts).argmax(axis=1) + np.arange(len(classes)) * restarts
    return SearchState(th[pick], images[pick], m[pick], conf[pick])


def score_prior_pool(
    meter: Meter,
    space: Space,
    classes: np.ndarray,
    pool: int,
    rng: np.random.Generator,
    margin_cap: float,
    *,
    labels_only: bool = False,
) -> SearchState:
    """Query ``pool`` prior samples once; each trajectory starts from a distinct best sample of its class.

    ``labels_only``: rank the samples by predicted label alone (then by the prior), whatever else the
    target returns."""
    uniq = np.unique(classes)
    left = meter.left()
    pool = pool if left is None else min(pool, left)
    if pool < 1:  # no query left: nothing reached
        theta0 = space.sample(len(classes), rng)
        n = len(classes)
        return SearchState(theta0, space.decode(theta0), np.full(n, -np.inf), np.zeros(n))
    theta = space.sample(pool, rng)
    images = space.decode(theta)
    pred = meter.predict(images)
    out_theta = np.zeros((len(classes), space.dim))
    out_m = np.zeros(len(classes))
    out_c = np.zeros(len(classes))
    for c in uniq:
        ix = np.flatnonzero(classes == c)
        m, conf = margins(pred, np.full(pool, c), labels_only=labels_only)
        fit = np.minimum(m, margin_cap) - space.penalty(theta, images)
        order = np.argsort(-fit, kind="stable")
        for j, i in enumerate(ix):
            k = order[j % pool]
            out_theta[i], out_m[i], out_c[i] = theta[k], m[k], conf[k]
    return SearchState(out_theta, space.decode(out_theta), out_m, out_c)


def nes_search(
    meter: Meter,
    space: Space,
    classes: np.ndarray,
    start: SearchState,
    *,
    queries_per_trajectory: int,
    population: int,
    sigma: float,
    lr: float,
    margin_cap: float,
    rng: np.random.Generator,
) -> SearchState:
    """Antithetic NES on ``min(margin, margin_cap) - prior``, all trajectories in lock-step (one batch each
    iteration); the best point seen (by fitness) is kept per trajectory."""
    T, d = start.theta.shape
    half = max(1, population // 2)
    per_iter = 2 * half + 1
    iters = max(0, queries_per_trajectory // per_iter)
    theta = start.theta.copy()
    best = SearchState(start.theta.copy(), start.images.copy(), start.margin.copy(), start.confidence.copy())
    best_fit = np.minimum(best.margin, margin_cap) - space.penalty(best.theta, best.images)
    m_adam = np.zeros_like(theta)
    v_adam = np.zeros_like(theta)
    b1, b2 = 0.9, 0.999
    cls_rep = np.repeat(classes, 2 * half)
    for it in range(iters):
        u = rng.standard_normal((T, half, d))
        u = np.concatenate([u, -u], axis=1)  # antithetic pairs
        cand = (theta[:, None, :] + sigma * u).reshape(-1, d)
        batch = np.concatenate([space.decode(cand), space.decode(theta)])
        try:
            pred = meter.predict(batch)
        except OutOfQueries:
            break
        n_c = cand.shape[0]
        m_all, c_all = margins(pred, np.concatenate([cls_rep, classes]))
        f = np.minimum(m_all[:n_c], margin_cap) - space.penalty(cand, batch[:n_c])
        m_cur, c_cur = m_all[n_c:], c_all[n_c:]
        f_cur = np.minimum(m_cur, margin_cap) - space.penalty(theta, batch[n_c:])
        better = f_cur > best_fit
        best.theta[better], best.images[better] = theta[better], batch[n_c:][better]
        best.margin[better], best.confidence[better], best_fit[better] = (
            m_cur[better],
            c_cur[better],
            f_cur[better],
        )
        fr = f.reshape(T, 2 * half)
        fr = (fr - fr.mean(axis=1, keepdims=True)) / (fr.std(axis=1, keepdims=True) + 1e-12)
        g = np.einsum("tk,tkd->td", fr, u) / (2 * half * sigma)
        m_adam = b1 * m_adam + (1 - b1) * g
        v_adam = b2 * v_adam + (1 - b2) * g * g
        step = (m_adam / (1 - b1 ** (it + 1))) / (np.sqrt(v_adam / (1 - b2 ** (it + 1))) + 1e-8)
        theta = theta + lr * step
        if space.name == "pixel":
            theta = np.clip(theta, 0.0, 1.0)
    return best


def brep_search(
    meter: Meter,
    space: Space,
    classes: np.ndarray,
    start: SearchState,
    *,
    queries_per_trajectory: int,
    points: int,
    radius: float,
    growth: float,
    step: float,
    rng: np.random.Generator,
) -> tuple[SearchState, np.ndarray]:
    """BREP-MI: from a point the target labels as the class, sample ``points`` directions on a sphere
    of the current radius, move away from the directions that leave the class (only moves that keep
    the label are accepted) and grow the radius whenever the whole sphere stays inside the class.

    Returns the final state and, per trajectory, the radius reached (in the space's units).
    """
    T, d = start.theta.shape
    theta = start.theta.copy()
    inside = start.margin > 0
    R = np.full(T, float(radius))
    robust = start.confidence.copy()
    per_iter = points + 1
    iters = max(0, queries_per_trajectory // per_iter)
    for _ in range(iters):
        if not inside.any():
            break
        act = np.flatnonzero(inside)
        u = rng.standard_normal((act.size, points, d))
        u /= np.linalg.norm(u, axis=2, keepdims=True)
        probes = (theta[act, None, :] + R[act, None, None] * u).reshape(-1, d)
        try:
            pred = meter.predict(space.decode(probes))
        except OutOfQueries:
            break
        lab = pred.labels.reshape(act.size, points)
        outside = (lab != classes[act, None]).astype(np.float64)
        frac_out = outside.mean(axis=1)
        robust[act] = 1.0 - frac_out
        g = -(outside[:, :, None] * u).mean(axis=1)  # repelled from the boundary
        gn = np.linalg.norm(g, axis=1, keepdims=True)
        move = np.where(gn > 0, g / np.where(gn > 0, gn, 1.0), 0.0)
        proposal = theta[act] + step * R[act, None] * move
        try:
            check = meter.predict(space.decode(proposal))
        except OutOfQueries:
            break
        ok = check.labels == classes[act]
        theta[act[ok]] = proposal[ok]
        grow = frac_out == 0
        R[act[grow]] = np.minimum(R[act[grow]] * growth, 10.0 * radius)
    images = space.decode(theta)
    m = np.where(inside, 1.0, -1.0)
    return SearchState(theta, images, m, np.where(inside, robust, 0.0)), R
