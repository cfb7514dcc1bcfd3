"""The feature space the distance detectors (k-NN, PRADA) measure in.

It must work in proxy mode, where the guard has no model to embed with: by default a random
Gaussian projection to ``dim`` dimensions seeded by the deployment secret (Johnson-Lindenstrauss:
pairwise L2 distances are kept within a small factor), or, once ``invguard guard calibrate`` has
seen benign public samples, their principal components (an encoder trained on public data, as
Chen, Carlini and Wagner suggest; distances in it ignore the directions natural data never moves
in).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


class Encoder:
    def __init__(self, mean: np.ndarray, components: np.ndarray, kind: str) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.components = np.asarray(components, dtype=np.float32)  # (dim, size)
        self.kind = kind

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        out: np.ndarray = (flat - self.mean) @ self.components.T
        return out

    def residual_fraction(self, x: np.ndarray) -> np.ndarray:
        """Per row: the fraction of its energy about the mean outside the components (PCA only: a
        random projection's rows are not orthonormal; NaN there)."""
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if self.kind != "pca":
            return np.full(len(flat), np.nan)
        c = flat - self.mean
        proj = c @ self.components.T
        total = (c * c).sum(axis=1)
        inside = (proj * proj).sum(axis=1)
        out: np.ndarray = np.clip(1.0 - inside / np.maximum(total, 1e-12), 0.0, 1.0)
        return out

    @classmethod
    def random(cls, secret: bytes, size: int, dim: int) -> Encoder:
        seed = int.from_bytes(hashlib.sha256(b"encoder" + secret).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        comp = rng.standard_normal((dim, size)) / np.sqrt(dim)
        return cls(np.zeros(size), comp, "random projection")

    @classmethod
    def pca(cls, X: np.ndarray, dim: int) -> Encoder:
        flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        mean = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        return cls(mean, vt[: min(dim, len(vt))], "pca")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoder:
        return cls(np.array(d["mean"]), np.array(d["components"]), str(d["kind"]))
