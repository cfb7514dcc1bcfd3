"""Frozen, typed results that serialise to a versioned JSON schema.

The report and the gates read only this JSON, never live objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

RESULT_SCHEMA_VERSION = "1.0"


def _clean(x: Any) -> Any:
    """Convert numpy values (recursively) into JSON-ready Python values; NaN/inf become None."""
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


@dataclass(frozen=True)
class Metric:
    """A number with its 95% confidence interval (``low``/``high`` are None where no CI applies)."""

    value: float
    low: float | None = None
    high: float | None = None
    higher_is_worse: bool = True
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _clean(
            {
                "value": self.value,
                "low": self.low,
                "high": self.high,
                "higher_is_worse": self.higher_is_worse,
                "description": self.description,
            }
        )
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Metric:
        v = d.get("value")
        return cls(
            value=float("nan") if v is None else float(v),
            low=d.get("low"),
            high=d.get("high"),
            higher_is_worse=bool(d.get("higher_is_worse", True)),
            description=str(d.get("description", "")),
        )

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        if self.low is None or self.high is None:
            return format(self.value, spec)
        return f"{format(self.value, spec)} [{format(self.low, spec)}, {format(self.high, spec)}]"


@dataclass(frozen=True)
class Finding:
    """A sentence-level conclusion an attack reached, with a severity (info, low, medium, high)."""

    title: str
    detail: str
    severity: str = "info"

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "detail": self.detail, "severity": self.severity}


@dataclass(frozen=True)
class AttackResult:
    """What one attack run produced.

    ``metrics`` are the gateable numbers; ``arrays`` hold reconstructions, scores and other array
    outputs (serialised as nested lists); ``tables`` hold row-oriented detail (per class, per record,
    per exposure) for the report; ``findings`` the conclusions in words.
    """

    attack: str
    params: Mapping[str, Any]
    target: str
    access: str
    metrics: Mapping[str, Metric]
    queries_used: int
    wall_time_s: float
    seed: int | None
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    tables: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> Metric:
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"{self.attack} has no metric {name!r}; it has {sorted(self.metrics)}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": RESULT_SCHEMA_VERSION,
            "attack": self.attack,
            "params": _clean(dict(self.params)),
            "target": self.target,
            "access": self.access,
            "metrics": {k: m.to_json() for k, m in self.metrics.items()},
            "queries_used": int(self.queries_used),
            "wall_time_s": float(self.wall_time_s),
            "seed": self.seed,
            "arrays": {
                k: {"shape": list(np.shape(v)), "data": _clean(np.asarray(v))} for k, v in self.arrays.items()
            },
            "tables": _clean(dict(self.tables)),
            "findings": [f.to_json() for f in self.findings],
            "info": _clean(dict(self.info)),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AttackResult:
        arrays = {
            k: np.asarray(
                [np.nan if x is None else x for x in np.ravel(np.asarray(v["data"], dtype=object))],
                dtype=np.float64,
            ).reshape(v["shape"])
            for k, v in d.get("arrays", {}).items()
        }
        return cls(
            attack=d["attack"],
            params=d.get("params", {}),
            target=d.get("target", ""),
            access=d.get("access", ""),
            metrics={k: Metric.from_json(m) for k, m in d.get("metrics", {}).items()},
            queries_used=int(d.get("queries_used", 0)),
            wall_time_s=float(d.get("wall_time_s", 0.0)),
            seed=d.get("seed"),
            arrays=arrays,
            tables=d.get("tables", {}),
            findings=tuple(Finding(**f) for f in d.get("findings", [])),
            info=d.get("info", {}),
        )


@dataclass(frozen=True)
class GateOutcome:
    """One gate's outcome: ``status`` is ``pass``, ``fail``, ``inconclusive`` (the CI straddles the
    threshold, or the metric is not measurable at this sample size) or ``error`` (not checkable).

    ``observed`` is the point estimate, ``low``/``high`` its 95% CI; ``decided_on`` is what the
    decision read (``high``/``low`` end of the CI, or ``estimate``); ``settle`` says, for an
    inconclusive gate, how much more data would decide it."""

    gate: str
    attack: str
    metric: str
    op: str
    threshold: float
    on: str
    severity: str
    status: str
    observed: float | None
    low: float | None
    high: float | None
    blocking: bool
    message: str
    decided_on: str | None = None
    settle: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
