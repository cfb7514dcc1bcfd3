"""Per-client k-NN distance (Chen, Carlini and Wagner, "Stateful Detection of Black-Box Adversarial
Attacks", ACM SPAI 2020 / arXiv:1907.05587).

The mean distance of a query to its ``k`` nearest earlier queries from the same client, in the
encoder's space: the queries of an iterative black-box search crowd around the points it is
improving, so this distance collapses; natural traffic spreads over the data. Flagged below the
threshold (set for a target false-positive rate by calibration). The client's history is the last
``history`` queries (the paper keeps a buffer of 1,000 with k = 50; a smaller buffer keeps the
work per query and the memory per client bounded). Exact repeats of a row are not counted (they
are no probe).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from invguard.guard.detect.base import DETECTORS, Detector, Observation


def neighbour_distances(
    history: np.ndarray, new: np.ndarray, k: int, skip: np.ndarray
) -> tuple[list[float], list[float]]:
    """For each new row, in order (earlier new rows count as history for later ones): the mean of
    its ``k`` smallest distances to the earlier rows (NaN when fewer than ``k`` exist), and, for
    PRADA, its smallest distance (left out when there is no earlier row). ``skip`` rows (exact
    repeats) are NaN, give no distance and are not added to the history."""
    knn: list[float] = []
    dmins: list[float] = []
    pool = history if len(history) else np.zeros((0, new.shape[1]), dtype=np.float32)
    for i, f in enumerate(new):
        if skip[i]:
            knn.append(float("nan"))
            continue
        if len(pool):
            d = np.sqrt(((pool - f) ** 2).sum(axis=1))
            dmins.append(float(d.min()))
            knn.append(float(np.partition(d, k - 1)[:k].mean()) if len(d) >= k else float("nan"))
        else:
            knn.append(float("nan"))
        pool = np.vstack([f[None, :], pool])
    return knn, dmins


@DETECTORS.register("knn")
class KnnDetector(Detector):
    name: ClassVar[str] = "knn"
    higher_is_attack: ClassVar[bool] = False
    thresholds: ClassVar[tuple[str, ...]] = ("knn.threshold",)

    def statistic(self, obs: Observation) -> float | None:
        vals = [v for v in obs.knn if v == v]
        return min(vals) if vals else None

    def evidence(self, obs: Observation) -> dict[str, Any]:
        return {"k": self.cfg.k, "history": len(obs.exchange.features)}
