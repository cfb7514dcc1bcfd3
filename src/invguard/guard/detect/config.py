"""The ``detection`` section of ``guard.yaml``: which detectors run, their parameters and thresholds,
where their state lives, and what each role's detections lead to.

```yaml
detection:
  enabled: true
  backend: memory            # or redis (shared by replicas): redis_url, prefix
  input_range: [0, 1]        # the values a pixel takes (fingerprints quantise on this scale)
  calibration: detect-calibration.json   # written by `invguard guard calibrate`
  detectors:
    fingerprint: {window: 20, quant_step: 50, keep: 50, match: 25, recent: 32, matches: 8}
    knn: {k: 10, history: 128}
    prada: {history: 128, min_queries: 20}
    antithetic: {window: 24, tau: 0.35}
    subspace: {recent: 16, min_queries: 8}
    volume: {rows_per_hour: 10000, distinct_per_day: 20000, linked_keys: 3}
  roles:
    partner: {action: tighten, tighten_policy: label_only, duration_seconds: 3600}
    public: {action: block, duration_seconds: 86400}
  admin_roles: [admin]
```

Thresholds left unset take their defaults until calibration sets them (the guard says at start
which are which).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FingerprintConfig(_Strict):
    """Blacklight: quantise (step ``quant_step`` on a 0-255 scale, after a secret per-element salt),
    hash every ``window`` consecutive values (stride ``step``), keep the ``keep`` top hashes; a query
    sharing >= ``match`` hashes with an earlier one (not an exact repeat) is a match. A client is
    flagged when ``matches`` of its last ``recent`` queries matched."""

    enabled: bool = True
    window: int = Field(default=20, ge=2)
    step: int = Field(default=1, ge=1)
    quant_step: float = Field(default=50.0, gt=0, le=255)
    keep: int = Field(default=50, ge=2)
    match: int | None = Field(default=None, ge=1)  # default: keep // 2 (the paper's T = S/2)
    recent: int = Field(default=32, ge=2, le=1024)
    matches: int | None = Field(default=None, ge=1)
    postings: int = Field(default=64, ge=1)  # earlier queries kept per hash (the index's bound)


class KnnConfig(_Strict):
    """Chen, Carlini and Wagner: mean distance to the ``k`` nearest of the client's last
    ``history`` queries, in the encoder's space; flagged below ``threshold``."""

    enabled: bool = True
    k: int = Field(default=10, ge=1)
    history: int = Field(default=128, ge=2, le=4096)
    threshold: float | None = Field(default=None, ge=0)


class PradaConfig(_Strict):
    """PRADA: the minimum distances of each new query to the client's earlier ones; flagged when the
    Shapiro-Wilk statistic of the last ``history`` of them falls below ``threshold``."""

    enabled: bool = True
    history: int = Field(default=128, ge=8, le=4096)
    min_queries: int = Field(default=20, ge=8)
    every: int = Field(default=8, ge=1)  # test once per `every` queries of a client (the test costs)
    threshold: float | None = Field(default=None, gt=0, le=1)


class AntitheticConfig(_Strict):
    """Mirrored pairs (NES): ``pairs`` or more disjoint pairs of queries among the client's last
    ``window`` sharing one midpoint (within ``tau`` of their length), each pair longer than ``floor``
    (a fraction of the value range per element, RMS)."""

    enabled: bool = True
    window: int = Field(default=24, ge=4, le=256)
    every: int = Field(default=4, ge=1)  # one-row requests: test once per `every` queries
    tau: float = Field(default=0.35, gt=0, lt=1)
    floor: float = Field(default=0.02, ge=0)
    pairs: int | None = Field(default=None, ge=1)


class SubspaceConfig(_Strict):
    """Energy outside the public principal subspace: the mean fraction over the client's last
    ``recent`` queries (at least ``min_queries``), flagged below ``threshold`` (needs the PCA
    encoder calibration fits)."""

    enabled: bool = True
    recent: int = Field(default=16, ge=2, le=1024)
    min_queries: int = Field(default=8, ge=1)
    threshold: float | None = Field(default=None, ge=0, le=1)


class VolumeConfig(_Strict):
    """Rows per client per hour against its own baseline (``rate_factor`` times its mean over the
    previous hours, and at least ``rows_per_hour``), distinct inputs per client per UTC day
    (``distinct_per_day``), and ``linked_keys`` or more keys whose queries match each other."""

    enabled: bool = True
    rows_per_hour: int | None = Field(default=None, ge=1)
    rate_factor: float = Field(default=10.0, gt=1)
    distinct_per_day: int | None = Field(default=None, ge=1)
    linked_keys: int = Field(default=3, ge=2)


class DetectorsConfig(_Strict):
    fingerprint: FingerprintConfig = Field(default_factory=FingerprintConfig)
    knn: KnnConfig = Field(default_factory=KnnConfig)
    prada: PradaConfig = Field(default_factory=PradaConfig)
    antithetic: AntitheticConfig = Field(default_factory=AntitheticConfig)
    subspace: SubspaceConfig = Field(default_factory=SubspaceConfig)
    volume: VolumeConfig = Field(default_factory=VolumeConfig)


class ThrottleConfig(_Strict):
    burst: int = Field(default=2, ge=1)
    per_second: float = Field(default=0.2, gt=0)


class RoleDetection(_Strict):
    """What a detection on a client of this role leads to. ``tighten`` answers with
    ``tighten_policy`` in the role's response shape; ``throttle`` applies ``throttle`` as a
    second rate limit; ``block`` refuses with 403. Each lasts ``duration_seconds`` and covers the
    keys linked to the client (``link: true``). A finding of a detector in ``corroborate`` only
    flags the client (a detection record and event with action ``none``): the action waits for a
    second, different detector to find the client (now or later, while the flag is remembered).
    The similarity detectors cannot tell a user re-sending noisy copies of a photo from a
    small-step search; listing them here keeps such a user's flag from becoming a mitigation."""

    detectors: tuple[str, ...] | None = None  # None = every enabled detector
    corroborate: tuple[str, ...] = ()
    action: Literal["none", "tighten", "throttle", "block"] = "tighten"
    tighten_policy: Any = "label_only"
    throttle: ThrottleConfig = Field(default_factory=ThrottleConfig)
    duration_seconds: float = Field(default=3600.0, gt=0)
    link: bool = True


class DetectionConfig(_Strict):
    enabled: bool = False
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "invguard:det"
    input_range: tuple[float, float] = (0.0, 1.0)
    salt_key: str | None = None  # default: <audit keys dir>/<log name>.detect-salt
    calibration: str | None = None
    store_inputs: bool = False  # keep raw inputs of flagged queries in the evidence (off: salted hashes only)
    encoder_dim: int = Field(default=32, ge=2, le=512)
    ttl_seconds: float = Field(default=86400.0, gt=0)
    max_clients: int = Field(default=100_000, ge=1)
    max_index_hashes: int = Field(default=2_000_000, ge=1000)
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    roles: dict[str, RoleDetection] = Field(default_factory=dict)
    default_role: RoleDetection = Field(default_factory=RoleDetection)
    admin_roles: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> DetectionConfig:
        lo, hi = self.input_range
        if not lo < hi:
            raise ValueError(f"input_range must be [low, high] with low < high, got {list(self.input_range)}")
        known = {"fingerprint", "knn", "prada", "antithetic", "subspace", "volume"}
        for name, r in self.roles.items():
            for d in (*(r.detectors or ()), *r.corroborate):
                if d not in known:
                    raise ValueError(
                        f"roles.{name}.detectors: unknown detector {d!r} (known: {sorted(known)})"
                    )
        return self

    def for_role(self, role: str) -> RoleDetection:
        return self.roles.get(role, self.default_role)
