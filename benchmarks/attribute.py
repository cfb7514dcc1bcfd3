"""Attribute inference on UCI Adult: the model's advantage over attackers without it, with CIs.

A target MLP is trained on the Adult members split. For each sensitive column, Fredrikson-style
MAP inference (with the target's scores, then with its labels only) is compared with the marginal
attacker (the public prior's mode) and the imputation attacker (a classifier trained on the public
split from the other columns and the label); the headline advantage is over the stronger of the
two; the same attack on non-members is the control.

    python benchmarks/attribute.py [--records 2000] [--recipe standard]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2000, help="members (and non-members) attacked")
    ap.add_argument("--recipe", default="standard", help="target training recipe")
    ap.add_argument("--sensitive", nargs="+", default=["marital-status", "sex", "relationship"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from invguard import attacks, data, policies
    from invguard.models import accuracy
    from invguard.models.train import fit
    from invguard.targets import TorchTarget

    splits = data.load("adult", seed=args.seed)
    spec = {"arch": "mlp", "hidden": [64], "input_shape": list(splits.input_shape), "num_classes": 2}
    t0 = time.perf_counter()
    module, report = fit(spec, splits.members.X, splits.members.y, recipe=args.recipe, seed=args.seed)
    held_out = accuracy(module, splits.nonmembers.X, splits.nonmembers.y)
    print(
        f"target: MLP(64) on {len(splits.members)} Adult members, recipe {args.recipe}: train acc "
        f"{report.train_accuracy:.3f}, held-out acc {held_out:.3f} ({time.perf_counter() - t0:.1f} s)"
    )
    target = TorchTarget(module, input_shape=splits.input_shape, access="scores")
    header = (
        f"{'sensitive':<15} {'answers':<7} {'accuracy':>22} {'marginal':>22} {'adv. over marg.':>22} "
        f"{'imputation':>22} {'adv. over imput.':>22} {'headline adv.':>22} {'non-member adv.':>22} "
        f"{'queries':>8} {'s':>5}"
    )
    print(header)
    print("-" * len(header))
    for col in args.sensitive:
        for label, view in (("scores", target), ("labels", policies.LabelOnly().wrap(target))):
            r = attacks.get("attribute.map")(sensitive=col, max_records=args.records, n_boot=1000).run(
                view, splits, seed=args.seed
            )
            cells = [
                format(r.metric(k), ".3f")
                for k in (
                    "accuracy",
                    "marginal_accuracy",
                    "advantage_over_marginal",
                    "imputation_accuracy",
                    "advantage_over_imputation",
                    "advantage",
                    "nonmember_advantage",
                )
            ]
            print(
                f"{col:<15} {label:<7} " + " ".join(f"{c:>22}" for c in cells) + f" {r.queries_used:>8} "
                f"{r.wall_time_s:>5.1f}",
                flush=True,
            )
            if label == "scores":
                print(f"    {r.findings[0].title} (headline over the {r.info['baseline']} attacker)")


if __name__ == "__main__":
    main()
