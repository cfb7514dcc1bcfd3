"""``invguard guard calibrate``: every detection threshold from benign traffic, to a target FPR.

The benign samples are replayed through the same detectors the guard runs (a fresh in-memory
state, one query per request, each stream as its own client), after the encoder is fitted to them
(their principal components). Each detector's per-request statistic is collected and its threshold
set so that at most ``fpr`` of the benign requests would be flagged, with 95% confidence: an
order statistic of the benign values chosen as a one-sided tolerance limit (:func:`_tail`; plus one
for the integer counts) on the attack side of each detector. The antithetic detector's pair count
is at least 3 whatever the benign values (two pairs can share a midpoint by chance).
The volume limits (rows per hour, distinct inputs per day) are not calibrated: a replayed
sample has no time in it and too few clients to estimate a tail; they are an operator's
decision, like budgets. The result is written to ``detection.calibration`` (JSON, atomically), which the
guard reads at start.

Benign samples: a ``.npy`` file (one stream), an ``.npz`` file (``X``, and optionally ``client``
with one id per row to split it into streams) or a directory of such files (one stream each).
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.errors import ConfigError
from invguard.guard.detect.config import DetectionConfig
from invguard.guard.detect.encoder import Encoder

CALIBRATED = (
    "fingerprint.matches",
    "knn.threshold",
    "prada.threshold",
    "antithetic.pairs",
    "subspace.threshold",
)


def load_benign(path: str | Path, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Benign streams from a file or directory (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--benign: {p} does not exist")
    files = sorted(f for f in p.iterdir() if f.suffix in (".npy", ".npz")) if p.is_dir() else [p]
    if not files:
        raise ConfigError(f"--benign: {p} holds no .npy or .npz files")
    size = int(np.prod(input_shape))
    streams: list[np.ndarray] = []
    for f in files:
        try:
            if f.suffix == ".npy":
                X, clients = np.load(f), None
            else:
                with np.load(f) as z:
                    if "X" not in z:
                        raise ConfigError(f"--benign: {f} has no array 'X' (found {sorted(z.files)})")
                    X = z["X"]
                    clients = z.get("client", None)
        except (ValueError, OSError) as e:
            raise ConfigError(f"--benign: {f} cannot be read as numpy data ({e})") from None
        if X.ndim < 2 or int(np.prod(X.shape[1:])) != size:
            raise ConfigError(
                f"--benign: {f}: expected samples of shape {input_shape} ({size} values), got {X.shape[1:]}"
            )
        X = X.reshape(len(X), size).astype(np.float32)
        if clients is None:
            streams.append(X)
        else:
            for c in dict.fromkeys(clients.tolist()):
                streams.append(X[clients == c])
    return streams


def _tail(v: list[float], fpr: float, high: bool) -> float:
    """The order statistic a threshold sits at: with ``n`` benign values, the ``k + 1``-th most
    attack-like, ``k`` the 5% quantile of Binomial(n, fpr) (a one-sided 95% tolerance limit, Wilks,
    "Determination of sample sizes for setting tolerance limits", Ann. Math. Stat. 1941): a
    threshold that leaves ``k`` benign values beyond it exceeds the target rate with probability
    at most 5% (for independent requests). A plain ``1 - fpr`` quantile of a few thousand requests
    is its own noise: half the time the held-out rate lands above target."""
    from scipy.stats import binom

    a = np.sort(np.asarray(v, dtype=np.float64))
    if high:
        a = a[::-1]
    k = max(0, int(binom.ppf(0.05, len(a), fpr)) - 1)
    # ppf gives the smallest k with P(X <= k) >= 5%; one fewer keeps P(X <= k) under it
    return float(a[min(k, len(a) - 1)])


async def _replay(det: Any, streams: list[np.ndarray]) -> dict[str, list[float]]:
    stats: dict[str, list[float]] = {k: [] for k in ("fingerprint", "knn", "prada", "antithetic", "subspace")}
    for i, s in enumerate(streams):
        for row in s:
            _, obs = await det.measure(f"benign-{i}", "benign", row[None, :])
            for name in stats:
                d = det.detectors.get(name)
                if d is not None:
                    v = d.statistic(obs)
                    if v is not None and v == v:
                        stats[name].append(float(v))
    return stats


def calibrate(
    cfg: DetectionConfig, input_shape: tuple[int, ...], streams: list[np.ndarray], fpr: float, secret: bytes
) -> dict[str, Any]:
    """The calibration document for these benign streams."""
    from prometheus_client import CollectorRegistry

    from invguard.guard.detect.engine import CALIBRATION_VERSION, Detection

    if not 0 < fpr < 1:
        raise ConfigError(f"--fpr must lie in (0, 1), got {fpr}")
    n = sum(len(s) for s in streams)
    if n < 2:
        raise ConfigError("--benign: give at least two benign samples")
    need = max(cfg.detectors.knn.history, cfg.detectors.prada.history)
    short = [len(s) for s in streams if len(s) < need]
    if short:
        raise ConfigError(
            f"--benign: {len(short)} of {len(streams)} streams are shorter than the detectors' history "
            f"({need} queries; the shortest has {min(short)}): the statistics of a short stream are not "
            "those of a client in steady state; give longer streams (fewer clients)"
        )
    X = np.concatenate(streams)
    enc = Encoder.pca(X, cfg.encoder_dim)
    fitted = cfg.model_copy(update={"calibration": None, "enabled": True})
    det = Detection(
        fitted,
        input_shape=input_shape,
        secret=secret,
        roles={"benign": None},
        limiter=None,
        registry=CollectorRegistry(),
    )
    det.encoder = enc
    stats = asyncio.run(_replay(det, streams))
    th: dict[str, float] = {}
    if stats["fingerprint"]:
        th["fingerprint.matches"] = float(math.floor(_tail(stats["fingerprint"], fpr, True)) + 1)
    if stats["knn"]:
        th["knn.threshold"] = _tail(stats["knn"], fpr, False)
    if stats["antithetic"]:
        # at least three pairs: two can share a midpoint by chance; an NES iteration sends many
        th["antithetic.pairs"] = float(max(3, math.floor(_tail(stats["antithetic"], fpr, True)) + 1))
    if stats["subspace"]:
        th["subspace.threshold"] = _tail(stats["subspace"], fpr, False)
    if stats["prada"]:
        th["prada.threshold"] = _tail(stats["prada"], fpr, False)
    return {
        "version": CALIBRATION_VERSION,
        "fpr": fpr,
        "samples": n,
        "streams": len(streams),
        "input_shape": list(input_shape),
        "thresholds": th,
        "benign_statistics": {k: len(v) for k, v in stats.items()},
        "encoder": enc.to_dict(),
    }


def write_calibration(doc: dict[str, Any], path: str | Path) -> None:
    """Write the calibration (through a temporary file and a rename: never half a file)."""
    from invguard.storage import atomic_write

    atomic_write(Path(path), json.dumps(doc).encode())
