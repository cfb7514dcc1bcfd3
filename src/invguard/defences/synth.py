"""``invguard synth check``: does a synthetic dataset leak the real records it was made from?

Given the real records the generator was trained on, the synthetic records and (recommended) a
real *holdout* the generator never saw, from the same distribution:

- **Distance to the closest record (DCR)**: for each synthetic record, its distance to the nearest
  training record and to the nearest holdout record (training records subsampled to the holdout's
  size, so that both sides are equally dense). ``dcr_share`` is the share of synthetic records
  closer to a training record than to any holdout record (ties count one half), with Wilson's CI:
  about 0.5 for a generator that learned the distribution, near 1 for one that copies. The median
  DCR of the synthetic records is shown beside that of the holdout records (how far genuinely new
  records sit from the training set).
- **Nearest-neighbour distance ratio (NNDR)**: nearest over second-nearest training distance; a
  synthetic record sitting on one real record has a ratio near 0. Medians with bootstrap CIs for
  the synthetic and the holdout records.
- **anonymeter** (Giomi et al., "A Unified Framework for Quantifying Privacy Risk in Synthetic
  Data", PoPETs 2023): singling-out, linkability and attribute-inference risks with their 95% CIs,
  measured against the holdout as control (tables only).
- **Membership inference against the generator's output**: each real record is scored by minus its
  distance to the closest synthetic record (the distance attack of Chen et al., "GAN-Leaks", CCS
  2020); training records against holdout records give the ROC, AUC, TPR at low FPR and the
  epsilon the ROC implies, with CIs.

The verdict flags a leak only when an interval clears its no-leak value (``dcr_share`` above 0.5,
an anonymeter risk above 0, AUC above 0.5); otherwise it says no leak was found by these checks.
Tables are CSV files (numeric columns standardised by the real data, the others one-hot); images
are ``.npz`` files (the array ``X`` or the first array, flattened). A model trained on the synthetic
data is audited as usual, with the real training records as the private members
(``data.members.file``) and the holdout as non-members.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.errors import ConfigError, DataError
from invguard.core.result import Finding, Metric

__all__ = ["Table", "check", "load_records", "render_html", "render_junit", "render_markdown", "synth_check"]


@dataclass(frozen=True)
class Table:
    """Records as a DataFrame (tables) or a feature matrix (images)."""

    kind: str  # "table" or "image"
    frame: Any  # pandas.DataFrame for tables, None for images
    X: np.ndarray | None  # images, flattened
    source: str

    def __len__(self) -> int:
        return len(self.frame) if self.frame is not None else int(self.X.shape[0])  # type: ignore[union-attr]


INSTALL_SYNTH = "pip install 'invguard[synth]' && pip install --no-deps 'anonymeter==1.1.0'"


def _missing(package: str, e: ImportError) -> ConfigError:
    """The clear error of a missing optional dependency of the synth extra (exit code 2)."""
    return ConfigError(
        f"invguard synth check needs the {package} package, which is not installed "
        f"({type(e).__name__}: {e}); install the synth extra: {INSTALL_SYNTH} "
        "(anonymeter goes in with --no-deps: its numpy<1.27 pin is stale; it runs on numpy 2)"
    )


def load_records(path: str | Path, what: str) -> Table:
    """A CSV table or an ``.npz`` of images; ``what`` names the argument in errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: {p} not found")
    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if not keys:
                raise DataError(f"{what}: {p} holds no arrays")
            arr = np.asarray(z["X"] if "X" in keys else z[keys[0]], dtype=np.float64)
        if arr.ndim < 2 or arr.shape[0] < 2:
            raise DataError(f"{what}: {p} needs an array of at least 2 records, got shape {arr.shape}")
        return Table("image", None, arr.reshape(arr.shape[0], -1), str(p))
    if p.suffix.lower() not in (".csv", ".txt"):
        raise ConfigError(f"{what}: {p} must be a .csv table or an .npz of images")
    try:
        import pandas as pd
    except ImportError as e:
        raise _missing("pandas", e) from None

    try:
        df = pd.read_csv(p, skipinitialspace=True)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{what}: {p} is not a readable CSV ({e})") from None
    if len(df) < 2 or df.shape[1] < 1:
        raise DataError(f"{what}: {p} needs at least 2 records and 1 column, got {df.shape}")
    return Table("table", df, None, str(p))


class _Encoder:
    """Numeric columns standardised by the real records; the others one-hot (scaled by 1/sqrt 2,
    so a changed category moves a record by 1 like one standard deviation)."""

    def __init__(self, real: Table) -> None:
        self.kind = real.kind
        if real.kind == "image":
            self.mu = real.X.mean(0)  # type: ignore[union-attr]
            self.sd = real.X.std(0) + 1e-9  # type: ignore[union-attr]
            return
        df = real.frame
        self.columns = list(df.columns)
        from pandas.api.types import is_numeric_dtype

        self.numeric = [c for c in self.columns if is_numeric_dtype(df[c])]
        self.categorical = [c for c in self.columns if c not in self.numeric]
        self.stats = {c: (float(df[c].mean()), float(df[c].std() or 1.0)) for c in self.numeric}
        self.levels = {c: sorted(map(str, df[c].dropna().unique())) for c in self.categorical}

    def check(self, t: Table, what: str) -> None:
        if t.kind != self.kind:
            raise DataError(
                f"{what}: {t.source} is {'an image array' if t.kind == 'image' else 'a table'}, "
                f"the real records are not"
            )
        if t.kind == "image":
            if t.X.shape[1] != self.mu.shape[0]:  # type: ignore[union-attr]
                raise DataError(
                    f"{what}: {t.source} has {t.X.shape[1]} features per record, the real "  # type: ignore[union-attr]
                    f"records {self.mu.shape[0]}"
                )
            return
        missing = [c for c in self.columns if c not in t.frame.columns]
        if missing:
            raise DataError(f"{what}: {t.source} lacks the columns {missing} of the real records")

    def __call__(self, t: Table) -> np.ndarray:
        if t.kind == "image":
            out: np.ndarray = (t.X - self.mu) / self.sd
            return out
        df = t.frame
        parts = []
        for c in self.numeric:
            mu, sd = self.stats[c]
            v = np.asarray(df[c], dtype=np.float64)
            parts.append(((np.nan_to_num(v, nan=mu)) - mu)[:, None] / sd)
        for c in self.categorical:
            vals = df[c].astype(str).to_numpy()
            parts.append(np.stack([vals == lv for lv in self.levels[c]], 1).astype(np.float64) / np.sqrt(2))
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(df), 0))


def _nn(ref: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=k).fit(ref).kneighbors(q)
    out: np.ndarray = d
    return out


def _median_metric(x: np.ndarray, *, seed: int, n_boot: int, desc: str, higher_is_worse: bool) -> Metric:
    from invguard.metrics.stats import bootstrap_metric

    return bootstrap_metric(
        np.median, x, n_boot=n_boot, seed=seed, description=desc, higher_is_worse=higher_is_worse
    )


def check(
    real: Table,
    synthetic: Table,
    holdout: Table | None = None,
    *,
    secret: str | None = None,
    n_attacks: int | None = None,
    n_boot: int = 500,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole check (see the module docstring): a JSON-ready document with a verdict."""
    from invguard.metrics.membership import membership_metrics
    from invguard.metrics.privacy import roc_epsilon_metric
    from invguard.metrics.stats import proportion_metric

    enc = _Encoder(real)
    enc.check(synthetic, "--synthetic")
    if holdout is not None:
        enc.check(holdout, "--holdout")
    rng = np.random.default_rng([seed, 4242])
    R, S = enc(real), enc(synthetic)
    H = enc(holdout) if holdout is not None else None
    metrics: dict[str, Metric] = {}
    notes: list[str] = []
    d_syn_train = _nn(R, S, 2)
    nndr_syn = d_syn_train[:, 0] / np.maximum(d_syn_train[:, 1], 1e-12)
    metrics["nndr_synthetic_median"] = _median_metric(
        nndr_syn,
        seed=seed,
        n_boot=n_boot,
        higher_is_worse=False,
        desc="median nearest / second-nearest training-record distance of the synthetic records",
    )
    metrics["dcr_synthetic_median"] = _median_metric(
        d_syn_train[:, 0],
        seed=seed,
        n_boot=n_boot,
        higher_is_worse=False,
        desc="median distance of a synthetic record to its closest training record",
    )
    mia: dict[str, Any] | None = None
    if H is not None:
        k = min(len(R), len(H))
        R_eq = R[np.sort(rng.choice(len(R), size=k, replace=False))]
        H_eq = H[np.sort(rng.choice(len(H), size=k, replace=False))] if len(H) > k else H
        d_tr = _nn(R_eq, S, 1)[:, 0]
        d_ho = _nn(H_eq, S, 1)[:, 0]
        closer = float(np.sum(d_tr < d_ho) + 0.5 * np.sum(d_tr == d_ho))
        metrics["dcr_share"] = proportion_metric(
            round(closer),
            len(S),
            description="share of synthetic records closer to a training record than to any holdout "
            "record (0.5: no closer to the training data than to new data; 1: copies)",
        )
        d_hold_train = _nn(R, H, 2)
        metrics["dcr_holdout_median"] = _median_metric(
            d_hold_train[:, 0],
            seed=seed,
            n_boot=n_boot,
            higher_is_worse=False,
            desc="median distance of a holdout record to its closest training record (the reference)",
        )
        metrics["nndr_holdout_median"] = _median_metric(
            d_hold_train[:, 0] / np.maximum(d_hold_train[:, 1], 1e-12),
            seed=seed,
            n_boot=n_boot,
            higher_is_worse=False,
            desc="median NNDR of the holdout records (the reference)",
        )
        # membership inference against the generator's output: closeness to the synthetic data
        scores = -np.r_[_nn(S, R_eq, 1)[:, 0], _nn(S, H_eq, 1)[:, 0]]
        truth = np.r_[np.ones(len(R_eq), np.int64), np.zeros(len(H_eq), np.int64)]
        mm = membership_metrics(scores, truth, n_boot=n_boot, seed=seed)
        for name in ("auc", "tpr_at_fpr_0.01", "advantage"):
            metrics[f"mia_{name}"] = mm[name]
        metrics["mia_epsilon_roc"] = roc_epsilon_metric(scores, truth, max_fpr=0.01)
        mia = {
            "members": len(R_eq),
            "nonmembers": len(H_eq),
            "score": "minus the distance to the closest synthetic record",
        }
    else:
        notes.append(
            "No holdout was given: the DCR share, the membership attack and anonymeter's control-"
            "corrected risks need real records the generator never saw; only absolute distances are shown."
        )
    if real.kind == "table":
        n_att = default_n_attacks(len(real)) if n_attacks is None else n_attacks
        rule = " (the default: a third of the real records, between 20 and 500)" if n_attacks is None else ""
        notes.append(f"anonymeter: each attack targets up to {n_att} records{rule}.")
        metrics.update(
            _anonymeter(
                real,
                synthetic,
                holdout,
                secret=secret,
                n_attacks=n_att,
                seed=seed,
                rng=rng,
                progress=progress,
            )
        )
    else:
        notes.append("anonymeter's risks are defined for tables; this check ran on images (distances only).")
    findings = _verdict(metrics)
    return {
        "format": "invguard-synth-check",
        "version": "1.0",
        "kind": real.kind,
        "records": {
            "real": len(real),
            "synthetic": len(synthetic),
            "holdout": len(holdout) if holdout else None,
        },
        "sources": {
            "real": real.source,
            "synthetic": synthetic.source,
            "holdout": holdout.source if holdout else None,
        },
        "metrics": {k: m.to_json() for k, m in metrics.items()},
        "membership_attack": mia,
        "findings": [f.to_json() for f in findings],
        "leak": any(f.severity in ("high", "critical", "medium") for f in findings),
        "notes": notes,
        "seed": seed,
    }


SINGLING_OUT_ATTEMPTS_PER_ATTACK = 1000


def default_n_attacks(n_real: int) -> int:
    """The default number of records each anonymeter attack targets: a third of the real records,
    at least 20 and at most 500 (300 rows: 100 attacks; 1,500 rows and more: 500). The risk's CI
    narrows as 1/sqrt(n_attacks), while the attacks' cost grows with it; a third keeps the attacked
    records a minority of the table and a small CSV's check within a couple of minutes."""
    return int(min(500, max(20, n_real // 3)))


def _anonymeter(
    real: Table,
    synthetic: Table,
    holdout: Table | None,
    *,
    secret: str | None,
    n_attacks: int,
    seed: int,
    rng: np.random.Generator,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Metric]:
    """anonymeter's three risks. Each attack uses every record passed to it (``n_attacks`` real and
    control records drawn here with the seeded generator), so a seeded run reproduces exactly.

    The singling-out attack draws predicates until ``n_attacks`` distinct ones single out a synthetic
    record; on a low-diversity synthetic set (a collapsed generator) there are fewer than that, and
    anonymeter's default of 10 million draws ran for many minutes, so the draws are capped at
    :data:`SINGLING_OUT_ATTEMPTS_PER_ATTACK` per attack (anonymeter then evaluates the queries it
    found). ``progress`` gets one line as each attack starts."""
    import warnings

    try:
        from anonymeter.evaluators import InferenceEvaluator, LinkabilityEvaluator, SinglingOutEvaluator
    except ImportError as e:
        raise _missing("anonymeter", e) from None

    cols = list(real.frame.columns)
    if secret is not None and secret not in cols:
        raise ConfigError(f"--secret: column {secret!r} is not in the real records; columns are {cols}")
    ori = real.frame[cols]
    syn = synthetic.frame[cols]
    ctl = holdout.frame[cols] if holdout is not None else None
    n = min(n_attacks, len(ori), *([len(ctl)] if ctl is not None else []))

    def pick(df: Any) -> Any:
        return df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))].reset_index(drop=True)

    ori_n, ctl_n = pick(ori), (pick(ctl) if ctl is not None else None)
    out: dict[str, Metric] = {}

    def risk(name: str, ev: Any, desc: str) -> None:
        r = ev.risk(confidence_level=0.95)
        out[name] = Metric(float(r.value), float(r.ci[0]), float(r.ci[1]), True, desc)

    n_runs = 3 if len(cols) >= 2 else 1
    started = [time.perf_counter()]

    def say(i: int, name: str) -> None:
        if progress is not None:
            took = time.perf_counter() - started[0]
            prev = f" (previous took {took:.0f}s)" if i > 1 else ""
            progress(f"anonymeter {i}/{n_runs}: {name}, {n} attacks{prev}")
        started[0] = time.perf_counter()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anonymeter warns when an attack finds few successes
        say(1, "singling-out")
        so = SinglingOutEvaluator(
            ori=ori_n,
            syn=syn,
            control=ctl_n,
            n_attacks=n,
            n_cols=min(3, len(cols)),
            max_attempts=SINGLING_OUT_ATTEMPTS_PER_ATTACK * n,
            seed=seed,
        )
        risk(
            "singling_out_risk",
            so.evaluate(mode="multivariate"),
            "anonymeter singling-out risk (multivariate predicates over 3 columns), control-corrected",
        )
        if len(cols) >= 2:
            half = len(cols) // 2
            say(2, "linkability")
            lk = LinkabilityEvaluator(
                ori=ori_n,
                syn=syn,
                control=ctl_n,
                n_attacks=n,
                aux_cols=(cols[:half], cols[half:]),
                n_neighbors=1,
            )
            risk(
                "linkability_risk",
                lk.evaluate(n_jobs=1),
                f"anonymeter linkability risk: {cols[:half]} linked to {cols[half:]} "
                "through the synthetic data",
            )
            target = secret or cols[-1]
            say(3, f"inference of {target!r}")
            inf = InferenceEvaluator(
                ori=ori_n,
                syn=syn,
                control=ctl_n,
                n_attacks=n,
                aux_cols=[c for c in cols if c != target],
                secret=target,
            )
            risk(
                "inference_risk",
                inf.evaluate(n_jobs=1),
                f"anonymeter attribute-inference risk of {target!r} from the other columns",
            )
    return out


def _low(m: Metric | None) -> float | None:
    return None if m is None else m.low


def _verdict(metrics: dict[str, Metric]) -> list[Finding]:
    out = []
    share = metrics.get("dcr_share")
    if share is not None and share.low is not None:
        if share.low > 0.5:
            sev = "high" if share.value >= 0.8 else "medium"
            out.append(
                Finding(
                    "Synthetic records sit on the training records",
                    f"{share.value:.0%} of the synthetic records (95% CI {share.low:.0%}-{share.high:.0%}) "
                    "are closer to a training record than to any holdout record, where 50% would mean they "
                    "are no closer to the training data than new records are: the generator copies (or "
                    "nearly copies) its training data.",
                    sev,
                )
            )
        else:
            out.append(
                Finding(
                    "No closer to the training data than to new data",
                    f"{share.value:.0%} of the synthetic records (95% CI {share.low:.0%}-{share.high:.0%}) "
                    "are closer to a training record than to any holdout record (50% expected for a "
                    "generator that does not copy).",
                    "info",
                )
            )
    for key, what in (
        ("singling_out_risk", "singling out"),
        ("linkability_risk", "linkability"),
        ("inference_risk", "attribute inference"),
    ):
        m = metrics.get(key)
        if m is None:
            continue
        if m.low is not None and m.low > 0:
            out.append(
                Finding(
                    f"anonymeter: {what} risk",
                    f"{what} risk {m.value:.3f} (95% CI {m.low:.3f}-{m.high:.3f}) above the control's: "
                    "the synthetic data lets an attacker learn about the training records beyond what "
                    "new records allow.",
                    "high" if m.value >= 0.2 else "medium",
                )
            )
        else:
            out.append(
                Finding(
                    f"anonymeter: no {what} risk measured",
                    f"{what} risk {m.value:.3f} (95% CI {m.low:.3f}-{m.high:.3f}): the interval reaches 0.",
                    "info",
                )
            )
    auc = metrics.get("mia_auc")
    if auc is not None and auc.low is not None:
        eps = metrics.get("mia_epsilon_roc")
        tail = f"; the ROC implies epsilon >= {eps.low:.3g} at 95% confidence" if eps and eps.low else ""
        if auc.low > 0.5:
            out.append(
                Finding(
                    "Membership is exposed by the synthetic data",
                    "Closeness to the synthetic records tells training records from holdout records with AUC "
                    f"{auc.value:.3f} (95% CI {auc.low:.3f}-{auc.high:.3f}){tail}.",
                    "high" if auc.value >= 0.75 else "medium",
                )
            )
        else:
            out.append(
                Finding(
                    "No membership signal in the synthetic data",
                    f"The distance attack reaches AUC {auc.value:.3f} (95% CI {auc.low:.3f}-"
                    f"{auc.high:.3f}): no better than chance.",
                    "info",
                )
            )
    return out


def synth_check(
    real: str | Path,
    synthetic: str | Path,
    holdout: str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    formats: list[str] | None = None,
    secret: str | None = None,
    n_attacks: int | None = None,
    seed: int = 0,
    clock: Any = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Load the files, run :func:`check`, write the reports; returns ``(document, paths)``."""
    from invguard.defences.report import write_reports

    t0 = (clock or time.time)()
    doc = check(
        load_records(real, "--real"),
        load_records(synthetic, "--synthetic"),
        load_records(holdout, "--holdout") if holdout is not None else None,
        secret=secret,
        n_attacks=n_attacks,
        seed=seed,
        progress=progress,
    )
    doc["started_at"] = t0
    doc["finished_at"] = (clock or time.time)()
    paths = write_reports(
        doc, Path(out_dir or "reports/synth"), formats or ["json", "html", "markdown", "junit"]
    )
    return doc, paths


# ------------------------------------------------------------------------------------------ reports


def verdict_text(doc: dict[str, Any]) -> str:
    bad = [f for f in doc["findings"] if f["severity"] in ("medium", "high", "critical")]
    if bad:
        return "Leak found: " + "; ".join(f["title"] for f in bad) + "."
    return "No leak found by these checks: " + "; ".join(f["title"] for f in doc["findings"]) + "."


def _metric_rows(doc: dict[str, Any]) -> list[list[str]]:
    from invguard.defences.report import fmt

    return [[k, fmt(m), m.get("description", "")] for k, m in doc["metrics"].items()]


def render_html(doc: dict[str, Any]) -> str:
    import json

    from invguard.defences.report import _html

    return _html(
        title="Synthetic-data leakage check",
        verdict=verdict_text(doc),
        bad=doc["leak"],
        paragraphs=[
            f"{doc['records']['synthetic']} synthetic records checked against {doc['records']['real']} "
            f"training records"
            + (f" and {doc['records']['holdout']} holdout records" if doc["records"]["holdout"] else "")
            + "; every rate with its 95% CI.",
            *doc.get("notes", []),
        ],
        chart=None,
        tables=[
            {
                "title": "Measurements",
                "head": ["metric", "value [95% CI]", "meaning"],
                "body": _metric_rows(doc),
                "highlight": None,
            }
        ],
        findings=doc["findings"],
        provenance=json.dumps({"sources": doc["sources"], "seed": doc["seed"]}, indent=2),
    )


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"### {'❌' if doc['leak'] else '✅'} Synthetic-data leakage check", "", verdict_text(doc), ""]
    lines += ["| metric | value [95% CI] |", "|---|---|"] + [
        f"| {r[0]} | {r[1]} |" for r in _metric_rows(doc)
    ]
    lines += ["", *[f"- **{f['severity']}**: {f['title']}: {f['detail']}" for f in doc["findings"]]]
    return "\n".join(lines) + "\n"


def render_junit(doc: dict[str, Any]) -> str:
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", name="invguard synth check")
    fails = 0
    for f in doc["findings"]:
        tc = ET.SubElement(suite, "testcase", classname="synth", name=f["title"])
        if f["severity"] in ("medium", "high", "critical"):
            fails += 1
            ET.SubElement(tc, "failure", message=f["detail"], type=f["severity"])
    suite.set("tests", str(len(doc["findings"])))
    suite.set("failures", str(fails))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def mixture_generator(frame: Any, n: int, *, components: int = 10, seed: int = 0) -> Any:
    """A reference generator: a Gaussian mixture fitted on ``frame`` (numeric columns standardised,
    the others one-hot), ``n`` records sampled and decoded (categories by the largest one-hot
    coordinate). Fitted on records disjoint from a training set, it is the independent generator
    a leakage check should pass."""
    import pandas as pd
    from sklearn.mixture import GaussianMixture

    t = Table("table", frame, None, "mixture")
    enc = _Encoder(t)
    Z = enc(t)
    gm = GaussianMixture(n_components=min(components, len(frame)), covariance_type="full", random_state=seed)
    gm.fit(Z + np.random.default_rng(seed).normal(0, 1e-3, Z.shape))
    S, _ = gm.sample(n)
    S = S[np.random.default_rng(seed).permutation(n)]
    out: dict[str, Any] = {}
    j = 0
    for c in enc.numeric:
        mu, sd = enc.stats[c]
        v = S[:, j] * sd + mu
        out[c] = np.round(v).astype(int) if pd.api.types.is_integer_dtype(frame[c]) else v
        j += 1
    for c in enc.categorical:
        k = len(enc.levels[c])
        out[c] = np.asarray(enc.levels[c], dtype=object)[np.argmax(S[:, j : j + k], axis=1)]
        j += k
    return pd.DataFrame(out)[list(frame.columns)]
