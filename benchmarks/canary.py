"""The canary's decision rule on simulated traffic: how often it rolls back a canary that behaves
exactly like the stable version, and how soon it rolls back one that answers confidently more often.

The guard's own :class:`~invguard.guard.canary.Canary` (its routing, window and comparison, with
the defaults of ``canary:``: a 1 h window checked every minute, 200 rows and 5 clients per
version, alpha 0.001, margin 0.02) is fed one minute of traffic per check: ``--clients`` clients
(``weight`` of them routed to the canary by the keyed hash) each sending ``--rows`` scored rows a
minute, each row high-confidence (M2) with the client's own probability. Two traffic models:

- *homogeneous*: every client's rows are high-confidence with the same probability (the
  independence the test assumes);
- *clustered*: each client's probability is drawn once from a Beta distribution with the same
  mean (concentration ``--kappa``): clients differ, so a version's rate depends on which clients
  it got: the test's independence assumption is broken on purpose.

Printed for two rules side by side on the same checks (the guard's, and Newcombe's bound alone,
i.e. rows taken as independent): under the null (both versions at the stable rate), the share of
checks that would roll back and the runs with at least one; with an effect (the canary's rate
multiplied), the minutes until the first rollback (median and max over seeds; "never" if it did not
come within the horizon). Only the comparison is simulated (no HTTP, no SQLite): each check calls
``Canary.evaluate`` on the window, as the on-call loop does.

    python benchmarks/canary.py [--days 2] [--seeds 5] [--clients 200] [--rows 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from invguard.guard.canary import Canary, CanaryStateStore
from invguard.guard.config import CanaryConfig


class _Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def run(
    tmp: Path,
    *,
    p: float,
    factor: float,
    kappa: float | None,
    clients: int,
    rows: int,
    minutes: int,
    seed: int,
    stop_at_first: bool,
) -> tuple[int, dict[str, list[int]]]:
    """(checks made, the minutes at which each rule would roll back): ``guard`` is the guard's
    rule, ``rows`` Newcombe's bound alone (rows taken as independent), from the same checks."""
    clock = _Clock()
    cfg = CanaryConfig(version="v2", weight=0.05, path="unused")
    c = Canary(
        cfg,
        model_name="m",
        stable_version="v1",
        stable_model=None,
        canary_model=None,
        key=seed.to_bytes(4, "big") * 8,
        store=CanaryStateStore(tmp / f"s{seed}-{factor}-{kappa}.db", clock=clock),
        registry=CollectorRegistry(),
        clock=clock,
    )
    rng = np.random.default_rng(seed)
    ids = [f"client-{seed}-{i}" for i in range(clients)]
    base = np.full(clients, p) if kappa is None else rng.beta(p * kappa, (1 - p) * kappa, size=clients)
    arms = [c.choose(i) for i in ids]
    probs = np.array([min(1.0, b * factor) if a.canary else b for a, b in zip(arms, base, strict=True)])
    c._sample(clock.t)
    checks = 0
    at: dict[str, list[int]] = {"guard": [], "rows": []}
    for minute in range(1, minutes + 1):
        clock.t += 60
        confident = rng.binomial(rows, probs)
        for a, i, k in zip(arms, ids, confident.tolist(), strict=True):
            c.served(a, i, rows, k)
        c._sample(clock.t)
        d = c.evaluate(clock.t)["slis"]["high_confidence_rate"]
        checks += 1
        if d.get("decided"):
            if d["breach"]:
                at["guard"].append(minute)
            if d["lower_rows"] > d["margin"]:
                at["rows"].append(minute)
        if stop_at_first and at["guard"] and at["rows"]:
            break
    return checks, at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=2.0, help="simulated days per null run")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rows", type=int, default=10, help="scored rows per client per minute")
    ap.add_argument("--p", type=float, default=0.05, help="the stable version's M2 rate")
    ap.add_argument("--kappa", type=float, default=4.0, help="Beta concentration of clustered traffic")
    args = ap.parse_args()
    minutes = int(args.days * 1440)
    print(
        f"{args.clients} clients x {args.rows} scored rows/min, weight 0.05, stable M2 {args.p}; "
        f"defaults: window 1 h, check 1 min, min 200 rows / 5 clients, alpha 0.001, margin 0.02"
    )
    rules = {"guard": "guard's rule", "rows": "rows as independent (Newcombe alone)"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, kappa in (("homogeneous", None), (f"clustered (Beta, kappa {args.kappa:g})", args.kappa)):
            print(f"\n{name}")
            checks = 0
            bad = {r: 0 for r in rules}
            runs_hit = {r: 0 for r in rules}
            for s in range(args.seeds):
                n, at = run(
                    tmp,
                    p=args.p,
                    factor=1.0,
                    kappa=kappa,
                    clients=args.clients,
                    rows=args.rows,
                    minutes=minutes,
                    seed=s,
                    stop_at_first=False,
                )
                checks += n
                for r in rules:
                    bad[r] += len(at[r])
                    runs_hit[r] += bool(at[r])
            for r, label in rules.items():
                print(
                    f"  null (equal rates), {label}: {bad[r]}/{checks} checks would roll back "
                    f"({bad[r] / checks:.2e}); runs of {args.days:g} days with a false rollback: "
                    f"{runs_hit[r]}/{args.seeds}"
                )
            for factor in (1.5, 2.0, 4.0, 8.0):
                times: dict[str, list[int | None]] = {r: [] for r in rules}
                for s in range(args.seeds):
                    _, at = run(
                        tmp,
                        p=args.p,
                        factor=factor,
                        kappa=kappa,
                        clients=args.clients,
                        rows=args.rows,
                        minutes=360,
                        seed=1000 + s,
                        stop_at_first=True,
                    )
                    for r in rules:
                        times[r].append(at[r][0] if at[r] else None)
                for r, label in rules.items():
                    got = [t for t in times[r] if t is not None]
                    med = f"{statistics.median(got):g}" if got else "-"
                    print(
                        f"  canary M2 x{factor:g} ({min(1.0, args.p * factor):.3f}), {label}: rolled back "
                        f"in {len(got)}/{len(times[r])} runs within 6 h; minutes to rollback median {med}, "
                        f"max {max(got) if got else '-'}"
                    )


if __name__ == "__main__":
    main()
