"""The distribution of a client's minimum query distances (Juuti, Szyller, Marchal and Asokan,
"PRADA: Protecting Against DNN Model Stealing Attacks", IEEE EuroS&P 2019).

For every new query, its distance to the nearest of the client's earlier queries joins the set
``D`` (the last ``history`` of them). Natural queries give distances that are close to normally
distributed; synthetic sequences (searches stepping from their own earlier queries, random
samples from a prior) give a skewed or spiked distribution. The Shapiro-Wilk statistic ``W`` of
``D`` (scipy) is compared with the threshold ``delta`` once ``min_queries`` distances are in, at
every ``every``-th query of the client (the test is the costliest step of detection); below it,
the client is flagged. The paper's growing set keeps only queries farther than
``mean - std`` of ``D``; here the history is the client's last queries (bounded memory), and exact
repeats are left out of ``D``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from invguard.guard.detect.base import DETECTORS, Detector, Observation


def shapiro_w(d: np.ndarray) -> float:
    from scipy.stats import shapiro

    if np.ptp(d) == 0:
        return 0.0  # every distance equal: as far from a normal sample as it gets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(shapiro(d).statistic)


@DETECTORS.register("prada")
class PradaDetector(Detector):
    name: ClassVar[str] = "prada"
    higher_is_attack: ClassVar[bool] = False
    thresholds: ClassVar[tuple[str, ...]] = ("prada.threshold",)

    def window(self, obs: Observation) -> np.ndarray:
        old = obs.exchange.dmins[: max(0, self.cfg.history - len(obs.dmins))]
        return np.concatenate([np.asarray(obs.dmins[::-1], dtype=np.float64), old])

    def statistic(self, obs: Observation) -> float | None:
        if not obs.dmins:
            return None
        q, every = obs.exchange.queries, self.cfg.every
        if q // every == (q - obs.rows) // every:  # no multiple of `every` in this request's queries
            return None
        d = self.window(obs)
        if len(d) < self.cfg.min_queries:
            return None
        return shapiro_w(d)

    def evidence(self, obs: Observation) -> dict[str, Any]:
        d = self.window(obs)
        return {"distances": len(d), "median_distance": round(float(np.median(d)), 6)}
