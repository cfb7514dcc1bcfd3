"""Queries that live in the public data's principal subspace: the mark of a search through a
public prior.

Inversion attacks without gradients search a low-dimensional prior built from public data: the
public mean plus a few principal components (a PCA prior), or the decoder of a generative model
trained on public images (GMI, Zhang et al., "The Secret Revealer", CVPR 2020; a VAE decoder is a
smooth map that rarely leaves the span of its training data's main components). Every query they
send, from the first prior samples on, is a point of that prior, so almost all its energy lies in
the public data's leading principal components; natural images keep a part of theirs outside them
(detail, stroke noise, individual style). Principal-component coefficients as a detection
statistic follow Hendrycks and Gimpel ("Early Methods for Detecting Adversarial Images", ICLR
workshop 2017), who found adversarial images abnormal in the low-ranked components; here the
abnormality is the other way round: too little energy outside the leading ones.

Per query: the fraction of its energy (about the public mean) outside the encoder's ``d`` principal
components (needs the PCA encoder that calibration fits; with the random-projection default this
detector is idle). Per client: the mean fraction of its last ``recent`` queries, once it has
``min_queries``; flagged below the threshold (calibration sets it to the benign ``fpr`` quantile of
the same statistic). The fraction is stored with the client's history (2 bytes per query).

What it cannot see: a search in a prior that adds natural-looking residual (a higher-dimensional
prior, or noise added to each query; the adaptive attacker's noise raises the fraction), and, on
low-dimensional inputs, priors with nearly as many components as the encoder (little residual is
left to compare).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from invguard.guard.detect.base import DETECTORS, Detector, Observation


@DETECTORS.register("subspace")
class SubspaceDetector(Detector):
    name: ClassVar[str] = "subspace"
    higher_is_attack: ClassVar[bool] = False
    thresholds: ClassVar[tuple[str, ...]] = ("subspace.threshold",)

    def recent(self, obs: Observation) -> np.ndarray:
        v = np.asarray(obs.residual[: self.cfg.recent], dtype=np.float64)
        out: np.ndarray = v[~np.isnan(v)]
        return out

    def statistic(self, obs: Observation) -> float | None:
        v = self.recent(obs)
        if len(v) < self.cfg.min_queries:
            return None
        return float(v.mean())

    def evidence(self, obs: Observation) -> dict[str, Any]:
        v = self.recent(obs)
        return {"queries": len(v), "median_residual_fraction": round(float(np.median(v)), 6)}
