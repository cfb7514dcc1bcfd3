"""The epsilon / utility / leakage / cost trade-off of DP-SGD, measured side by side in one run.

MNIST-5k (default; ``--dataset digits`` for the demo's time), an MLP (784-256-10) trained for the
same epochs, batch size and learning rate in every setting; epsilon in {inf, 8, 4, 2, 1} through
Opacus (RDP accountant, Poisson sampling, clipping norm 1). Every setting trains once on the
members plus 1000 mislabelled canaries (each included with probability 1/2) and is measured with:

- utility: held-out accuracy on the non-members (Wilson 95% CI);
- LiRA (Carlini et al. 2022) TPR at 0.1% FPR (reference models trained like the non-private target);
- white-box inversion lift over the no-model prior;
- the one-run empirical epsilon (Steinke, Nasr & Jagielski 2023) at 95% confidence, with a
  bootstrap range, and the Clopper-Pearson TPR/FPR bound, beside the accountant's epsilon;
- training cost: CPU time and its ratio to non-private training (Opacus' per-sample gradients).

Goals checked and printed: the non-private model's one-run bound >= 4 (Privacy Meter's one-run
audit reports 5.48 for a non-private CIFAR-10 model); soundness: for every DP model the one-run
bound's whole bootstrap range stays below the accountant's epsilon; the whole sweep's wall time
(<= 15 minutes on 2 CPU cores). The settings run as parallel jobs through the audit's executor.

    python benchmarks/tradeoff.py [--dataset mnist5k|digits] [--workers 2] [--out reports/bench-tradeoff]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist5k", choices=["mnist5k", "digits"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="reports/bench-tradeoff")
    ap.add_argument("--lira-models", type=int, default=8)
    args = ap.parse_args()

    from rich.console import Console

    from invguard.defences.tradeoff import TradeoffConfig, run_tradeoff

    mnist = args.dataset == "mnist5k"
    train = {"epochs": 60 if mnist else 80, "batch_size": 128, "lr": 0.003, "weight_decay": 0.0}
    cfg = TradeoffConfig.model_validate(
        {
            "name": f"{args.dataset}-dp-sgd",
            "data": {"dataset": args.dataset},
            "model": {"arch": "mlp", "hidden": [256]},
            "defence": {**train, "max_grad_norm": 1.0, "accountant": "rdp"},
            "sweep": {"epsilon": ["inf", 8, 4, 2, 1]},
            "canaries": {"count": 1000 if mnist else 300, "kind": "mislabelled", "n_boot": 200},
            "attacks": [
                {"name": "membership.lira", "params": {"n_models": args.lira_models, "train": train}},
                {"name": "inversion.whitebox", "params": {"steps": 150, "restarts": 1}},
            ],
            "gates": [
                "membership.lira.tpr_at_fpr_0.001 <= 0.05",
                "dp.one_run.epsilon_one_run <= 4",
            ],
            "max_utility_drop": 0.15,
            "cache_dir": ".invguard/cache",
            "output": {"dir": args.out},
        }
    )
    t0 = time.perf_counter()
    run = run_tradeoff(cfg, max_workers=args.workers, console=Console(stderr=True))
    wall = time.perf_counter() - t0
    doc = run.results

    def m(row: dict, dotted: str) -> dict | None:
        from invguard.defences.tradeoff import metric_of

        return metric_of(row, dotted)

    def f(x: dict | None, d: int = 3) -> str:
        if not x or x.get("value") is None:
            return "—"
        lo, hi = x.get("low"), x.get("high")
        return f"{x['value']:.{d}f}" + (
            f" [{lo:.{d}f}, {hi:.{d}f}]" if lo is not None and hi is not None else ""
        )

    print(
        f"\n{args.dataset}: MLP 256, {train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']}"
    )
    head = f"{'setting':<12} {'utility':<22} {'LiRA TPR@0.1%':<22} {'inversion lift':<22} "
    head += f"{'one-run eps (95%)':<24} {'CP eps':<8} {'accountant':<10} {'noise':<6} "
    head += f"{'CPU s':<7} {'cost ratio':<10}"
    print(head)
    for r in doc["settings"]:
        if r.get("status") != "ok":
            print(f"{r['label']:<12} {r.get('status')}: {r.get('error')}")
            continue
        p = r.get("privacy") or {}
        one = m(r, "dp.one_run.epsilon_one_run")
        cp = m(r, "dp.one_run.epsilon_clopper_pearson")
        print(
            f"{r['label']:<12} {f(r['utility']):<22} {f(m(r, 'membership.lira.tpr_at_fpr_0.001')):<22} "
            f"{f(m(r, 'inversion.whitebox.lift_over_prior')):<22} {f(one, 2):<24} "
            f"{(cp or {}).get('value', 0):<8.2f} {p.get('epsilon', float('inf')):<10.3g} "
            f"{p.get('noise_multiplier', 0):<6.2f} {r['cost']['cpu_time_s']:<7.1f} "
            f"{r['cost'].get('ratio_to_non_private', 0):<10.2f}"
        )
    print("\n" + doc["recommendation"]["text"])
    base = next((r for r in doc["settings"] if r.get("status") == "ok" and not r.get("private")), None)
    if base is not None:
        v = m(base, "dp.one_run.epsilon_one_run")
        ok = v is not None and v["value"] >= 4
        print(f"goal: non-private one-run epsilon >= 4: {v['value']:.2f} -> {'met' if ok else 'NOT met'}")
    for r in doc["settings"]:
        if r.get("status") == "ok" and r.get("private"):
            v = m(r, "dp.one_run.epsilon_one_run")
            acc = r["privacy"]["epsilon"]
            sound = v is not None and v["high"] is not None and v["high"] < acc
            print(
                f"soundness {r['label']}: one-run bound {v['value']:.3f}, bootstrap high {v['high']:.3f} "
                f"< accountant {acc:.3f}: {'yes' if sound else 'NO'}"
            )
    cpu = sum(r.get("job_cpu_time_s", 0.0) for r in doc["settings"])
    print(
        f"goal: whole sweep <= 15 min: {wall / 60:.1f} min wall -> {'met' if wall <= 900 else 'NOT met'} "
        f"(the jobs' CPU time: {cpu / 60:.1f} min, i.e. {cpu / 120:.1f} min on 2 idle cores)"
    )
    print(f"reports: {', '.join(str(p) for p in run.paths.values())}")
    Path(args.out).mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    main()
