"""Antithetic (mirrored) pairs: the signature of an evolution-strategy search.

Natural-evolution-strategy gradient estimates (Wierstra, Schaul, Glasmachers, Sun, Peters and
Schmidhuber, "Natural Evolution Strategies", JMLR 2014; Ilyas, Engstrom, Athalye and Lin,
"Black-box Adversarial Attacks with Limited Queries and Information", ICML 2018) query a centre
``c`` with mirrored perturbations ``c + s*u`` and ``c - s*u`` (antithetic or mirrored sampling,
Brockhoff, Auger, Hansen, Arnold and Hohm, PPSN 2010), which halves the estimate's variance. All
the pairs of one iteration share their midpoint, the centre: ``(p + q) = (p' + q') = 2c``. Natural
traffic almost never holds two pairs of distinct images with one midpoint; an NES iteration sends
``population / 2`` of them, usually in one request.

For the client's last ``window`` queries (a request's rows in windows of ``window`` rows, each
overlapping the previous by half, every row tested once), this detector finds, for every pair with
a new member, the other pairs whose sum lies within ``tau`` times their mean length of its sum, the
four points at least ``tau`` times that length apart (two noisy copies of one pair of images are not
a mirrored search) and each pair longer than ``floor``; the statistic is the largest such group. A
client is flagged at ``pairs`` or more. The test does not need the centre itself (NES queries it
only after all of an iteration's candidates, hundreds of queries later for a batched attack).

It works in the encoder's space (a linear map: a shared midpoint stays shared; the public data's
principal components once calibrated). Work per request: one product of the ``window (window - 1) /
2`` pair sums per window of ``window`` rows (``window = 24``: 276 sums); no state beyond the history
the k-NN detector keeps. One-row requests are tested once per ``every`` queries of the client
(the pending rows together), batched ones at every request. Input clipping (a search decoded
through ``clip``) bends the symmetry a little; ``tau`` allows for it.

An attacker who transforms every query independently (noise, shifts) breaks the symmetry in
proportion to the transformation's size against the search step: see the README's "What it cannot
see".
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from invguard.guard.detect.base import DETECTORS, Detector, Observation


def shared_midpoints(window: np.ndarray, fresh: int, tau: float, floor: float) -> int:
    """The most disjoint pairs of ``window`` rows sharing the midpoint of one pair that has a member
    among its first ``fresh`` rows (the rows not yet tested).

    Two pairs ``(p, q)`` and ``(p', q')`` share a midpoint when
    ``||(p + q) - (p' + q')|| <= tau * (||p - q|| + ||p' - q'||) / 2``; each pair is longer than
    ``floor`` and the four points lie at least ``tau`` times the mean pair length from each other
    (two noisy copies of one pair of images are no mirrored search).
    """
    m = len(window)
    if m < 4 or fresh < 1:
        return 0
    z = window.astype(np.float64)
    sq = (z * z).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0))  # row distances
    i, j = np.triu_indices(m, 1)
    length = d[i, j]
    ok = length > floor
    i, j, length = i[ok], j[ok], length[ok]
    new = i < fresh
    if not new.any() or len(i) < 2:
        return 0
    s = z[i] + z[j]
    ss = (s * s).sum(axis=1)
    ia, ja, la = i[new], j[new], length[new]
    gap = np.sqrt(np.maximum(ss[new][:, None] + ss[None, :] - 2.0 * (s[new] @ s.T), 0.0))
    mean_len = (la[:, None] + length[None, :]) / 2.0
    a, b = np.nonzero(gap <= tau * mean_len)
    if not len(a):
        return 0
    cross = np.minimum.reduce([d[ia[a], i[b]], d[ia[a], j[b]], d[ja[a], i[b]], d[ja[a], j[b]]])
    valid = cross >= tau * mean_len[a, b]
    if not valid.any():
        return 0
    return int(np.bincount(a[valid], minlength=len(ia)).max())


def antithetic_counts(
    history: np.ndarray,
    new: np.ndarray,
    skip: np.ndarray,
    *,
    window: int,
    tau: float,
    floor: float,
    pending: int = 0,
) -> list[int]:
    """Per window (attributed to its newest row): the largest group of mirrored pairs
    (:func:`shared_midpoints`). The request's rows and the ``pending`` newest history rows (not
    yet tested: the detector tests one-row requests once per ``every``) are the fresh rows, taken in
    windows of ``window`` rows, each overlapping the previous by half, every fresh row tested once;
    0 for rows that were skipped (exact repeats)."""
    rows = new[~skip]
    out = [0] * len(new)
    where = np.flatnonzero(~skip)[::-1]  # the request's rows, newest first
    n = len(rows)
    hist = history[: window + pending] if len(history) else np.zeros((0, new.shape[1]), dtype=np.float32)
    seq = np.vstack([rows[::-1], hist])  # most recent first
    fresh_rows = min(len(seq), n + pending)
    step = max(1, window // 2)
    for start in range(0, fresh_rows, step):
        c = shared_midpoints(seq[start : start + window], min(step, fresh_rows - start), tau, floor)
        k = where[min(start, n - 1)] if n else 0
        if n:
            out[k] = max(out[k], c)
    return out


@DETECTORS.register("antithetic")
class AntitheticDetector(Detector):
    name: ClassVar[str] = "antithetic"
    thresholds: ClassVar[tuple[str, ...]] = ("antithetic.pairs",)

    def statistic(self, obs: Observation) -> float | None:
        return float(max(obs.antithetic)) if obs.antithetic else None

    def evidence(self, obs: Observation) -> dict[str, Any]:
        return {
            "mirrored_pairs": int(max(obs.antithetic)) if obs.antithetic else 0,
            "tau": self.cfg.tau,
            "window": self.cfg.window,
        }
