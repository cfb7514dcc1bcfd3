"""``invguard demo``: an audit of the bundled digits model with every attack available.

It writes the config it ran (``audit.yaml``) next to the reports in ``reports/demo/`` so that a
newcomer can copy and edit it. Each attack runs at its declared ``fast_params`` (its smallest
meaningful configuration), so the whole demo fits in about two minutes on two CPU cores; they are
smaller than a real audit's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from invguard.core.errors import ConfigError

# the demo's gates, used for whichever of these attacks are installed
# Inversion is gated on the lift over the no-model prior: what the attack recognises beyond what
# public data alone gives (raw attack accuracy on digits is high even for a model that leaks nothing).
DEMO_GATES: list[dict[str, Any]] = [
    {"metric": "inversion.whitebox.lift_over_prior", "op": "<=", "threshold": 0.2, "severity": "high"},
    {"metric": "inversion.blackbox.lift_over_prior", "op": "<=", "threshold": 0.2, "severity": "high"},
    {"metric": "inversion.generative.lift_over_prior", "op": "<=", "threshold": 0.2, "severity": "high"},
    {"metric": "inversion.label_only.lift_over_prior", "op": "<=", "threshold": 0.2, "severity": "medium"},
    {"metric": "membership.threshold.auc", "op": "<=", "threshold": 0.6, "severity": "medium"},
    {"metric": "membership.lira.tpr_at_fpr_0.01", "op": "<=", "threshold": 0.05, "severity": "high"},
    {"metric": "membership.rmia.tpr_at_fpr_0.01", "op": "<=", "threshold": 0.05, "severity": "high"},
]

# the exposure sweep: these attacks (those installed) at every policy; each exposure shows the worst
SWEEP_ATTACKS = ("inversion.blackbox", "membership.threshold")
SWEEP_POLICIES: list[Any] = ["logits", "scores", "top_k=3 round=2", "top_k=1", "label_only"]


def demo_config(*, seed: int = 0, out_dir: str | Path = "reports/demo") -> dict[str, Any]:
    """The demo audit config (a plain mapping, as it would be read from YAML)."""
    from invguard.attacks import ATTACKS

    # every bundled attack that runs on the digits splits (attacks declaring other data, e.g. tabular
    # records with a sensitive column, need a dataset the demo does not have)
    names = [
        n
        for n in ATTACKS.names()
        if ATTACKS.get(n).__module__.startswith("invguard.") and ATTACKS.get(n).data_kind == "any"
    ]
    if not names:
        raise ConfigError("invguard demo: no attacks are installed (invguard.attacks has none registered)")
    attacks = [{"name": n, "params": dict(ATTACKS.get(n).fast_params)} for n in names]
    cfg: dict[str, Any] = {
        "name": "digits-mlp (demo)",
        "seed": seed,
        # the name the history store and `invguard inventory check` know the model by
        "target": {"name": "digits-mlp", "model": "reference/digits-mlp"},
        "data": {"dataset": "digits"},
        "attacks": attacks,
        "gates": [g for g in DEMO_GATES if ".".join(g["metric"].split(".")[:2]) in names],
        "output": {"dir": str(out_dir), "formats": ["json", "html", "junit", "markdown"]},
    }
    sweep = [a for a in SWEEP_ATTACKS if a in names]
    if sweep:
        cfg["exposures"] = {
            "attacks": sweep,
            "policies": SWEEP_POLICIES,
            "params": {a: dict(ATTACKS.get(a).fast_params) for a in sweep},
        }
    return cfg


def write_demo_config(out_dir: Path, seed: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "audit.yaml"
    text = "# The audit `invguard demo` ran; copy it and point `target` and `data` at your own model.\n"
    # a JSON round trip shares no objects, so the YAML has no anchors (&id001) for a reader to decode
    text += yaml.safe_dump(json.loads(json.dumps(demo_config(seed=seed, out_dir=out_dir))), sort_keys=False)
    path.write_text(text)
    return path
