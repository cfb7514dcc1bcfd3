"""The audit history: every run appended to an embedded SQLite store (``.invguard/history.db``).

Each run records the model key, time, config hash, verdict and every metric of every attack (with
its CI and the exposure it was measured at). ``record`` returns what the report shows: the previous
run of the same model and each metric's change since then. ``last_audit`` answers the inventory's
question "when was this model last audited, and with which attacks?".

The same store keeps the **privacy-budget ledger**: the (epsilon, delta) each model version's
differentially private training spent on a dataset (``record_privacy``), so that
``privacy_budget`` answers "how much of this data's budget have we used?" across retrainings.
Versions of one model trained on the same data compose sequentially: the ledger sums their
epsilons and deltas (basic composition, Dwork & Roth 2014, Theorem 3.16), an upper bound.
Recording the same model version again replaces its entry (a retry is not a second release).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    config_hash TEXT NOT NULL,
    passed INTEGER NOT NULL,
    summary TEXT NOT NULL,
    attacks TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_model ON runs (model, finished_at);
CREATE TABLE IF NOT EXISTS privacy_ledger (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    dataset TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (model, version, dataset)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    attack TEXT NOT NULL,
    exposure TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    low REAL,
    high REAL,
    PRIMARY KEY (run_id, attack, exposure, metric)
);
"""


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=30)
    try:
        con.executescript(_SCHEMA)
        yield con
        con.commit()
    finally:
        con.close()


def _metric_rows(results: dict[str, Any]) -> list[tuple[str, str, str, Any, Any, Any]]:
    rows = []
    for a in results.get("attacks", []):
        if a.get("status") != "ok":
            continue
        exposure = a.get("exposure") or "as deployed"
        for name, m in a.get("metrics", {}).items():
            rows.append((a["attack"], exposure, name, m.get("value"), m.get("low"), m.get("high")))
    return rows


def record(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Append this run and return ``{"store", "run_id", "previous", "deltas"}`` for the report.

    ``deltas`` maps ``attack -> exposure -> metric -> {previous, current, change}`` for every metric
    also present in the previous run of the same model.
    """
    model = results["target"]["model_key"]
    audit = results["audit"]
    with connect(path) as con:
        prev = con.execute(
            "SELECT id, finished_at, config_hash, passed, summary FROM runs WHERE model = ? "
            "ORDER BY finished_at DESC, id DESC LIMIT 1",
            (model,),
        ).fetchone()
        previous = None
        deltas: dict[str, dict[str, dict[str, Any]]] = {}
        if prev is not None:
            previous = {
                "run_id": prev[0],
                "finished_at": prev[1],
                "config_hash": prev[2],
                "passed": bool(prev[3]),
                "summary": prev[4],
            }
            old = {
                (a, e, m): v
                for a, e, m, v in con.execute(
                    "SELECT attack, exposure, metric, value FROM metrics WHERE run_id = ?", (prev[0],)
                )
            }
            for a, e, m, v, _, _ in _metric_rows(results):
                if (a, e, m) in old and old[(a, e, m)] is not None and v is not None:
                    deltas.setdefault(a, {}).setdefault(e, {})[m] = {
                        "previous": old[(a, e, m)],
                        "current": v,
                        "change": v - old[(a, e, m)],
                    }
        cur = con.execute(
            "INSERT INTO runs (model, started_at, finished_at, config_hash, passed, summary, attacks) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                model,
                audit["started_at"],
                audit["finished_at"],
                results["provenance"]["config_hash"],
                int(results["verdict"]["passed"]),
                results["verdict"]["summary"],
                json.dumps(
                    sorted({a["attack"] for a in results.get("attacks", []) if a.get("status") == "ok"})
                ),
            ),
        )
        run_id = cur.lastrowid
        con.executemany(
            "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, *r) for r in _metric_rows(results)],
        )
    return {"store": str(path), "run_id": run_id, "previous": previous, "deltas": deltas}


def last_audit(path: Path, model: str) -> dict[str, Any] | None:
    """The latest run of ``model`` in the store: ``{finished_at, passed, attacks, summary}``, or None."""
    if not path.is_file():
        return None
    with connect(path) as con:
        row = con.execute(
            "SELECT finished_at, passed, attacks, summary FROM runs WHERE model = ? "
            "ORDER BY finished_at DESC, id DESC LIMIT 1",
            (model,),
        ).fetchone()
    if row is None:
        return None
    return {"finished_at": row[0], "passed": bool(row[1]), "attacks": json.loads(row[2]), "summary": row[3]}


def record_privacy(
    path: Path,
    *,
    model: str,
    version: str,
    dataset: str,
    privacy: dict[str, Any],
    recorded_at: float,
) -> dict[str, Any]:
    """Enter what one model version's training spent on ``dataset``; returns the dataset's budget.

    ``privacy`` is the accounting block of a DP-trained model's metadata (epsilon, delta,
    accountant, ...). ``recorded_at`` is passed in (no clock is read here).
    """
    from invguard.core.errors import ConfigError

    try:
        eps, delta = float(privacy["epsilon"]), float(privacy["delta"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"privacy ledger: model {model!r} version {version!r} has no epsilon/delta accounting "
            f"to record (got {privacy!r})"
        ) from None
    if not (eps >= 0 and 0 <= delta <= 1):
        raise ConfigError(f"privacy ledger: epsilon must be >= 0 and delta in [0, 1]; got {eps}, {delta}")
    with connect(path) as con:
        con.execute(
            "INSERT OR REPLACE INTO privacy_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                model,
                version,
                dataset,
                eps,
                delta,
                str(privacy.get("accountant", "?")),
                recorded_at,
                json.dumps(privacy, sort_keys=True, default=str),
            ),
        )
    return privacy_budget(path, dataset)


def privacy_budget(path: Path, dataset: str, *, model: str | None = None) -> dict[str, Any]:
    """The budget spent on ``dataset`` (optionally by one model's versions), entries oldest first:
    ``{"dataset", "epsilon", "delta", "composition", "entries": [...], "by_model": {...}}``."""
    from invguard.metrics.privacy import basic_composition

    rows: list[tuple[Any, ...]] = []
    if path.is_file():
        with connect(path) as con:
            q = (
                "SELECT model, version, epsilon, delta, accountant, recorded_at FROM privacy_ledger "
                "WHERE dataset = ?"
            )
            args: tuple[Any, ...] = (dataset,)
            if model is not None:
                q += " AND model = ?"
                args = (dataset, model)
            rows = list(con.execute(q + " ORDER BY recorded_at, model, version", args))
    entries = [
        {
            "model": r[0],
            "version": r[1],
            "epsilon": r[2],
            "delta": r[3],
            "accountant": r[4],
            "recorded_at": r[5],
        }
        for r in rows
    ]
    eps, delta = basic_composition([e["epsilon"] for e in entries], [e["delta"] for e in entries])
    by_model: dict[str, dict[str, Any]] = {}
    for e in entries:
        b = by_model.setdefault(e["model"], {"versions": 0, "epsilon": 0.0, "delta": 0.0})
        b["versions"] += 1
        b["epsilon"], b["delta"] = basic_composition([b["epsilon"], e["epsilon"]], [b["delta"], e["delta"]])
    return {
        "dataset": dataset,
        "epsilon": eps,
        "delta": delta,
        "composition": "basic (sum of epsilons and deltas): an upper bound on the total spent",
        "entries": entries,
        "by_model": by_model,
    }
