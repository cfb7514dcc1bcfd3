"""Membership inference on an overfit MNIST-5k MLP: invguard's attacks side by side with ART's.

Prints TPR at 0.1% and 1% FPR and AUC (95% bootstrap CIs) for the loss-threshold, shadow-model,
LiRA (8, 16, 32 reference models) and RMIA attacks, and for ART's MembershipInferenceBlackBox and
MembershipInferenceBlackBoxRuleBased on the same model and split, with wall times; then the
speed-up of reference-model training with 2 process-pool workers over 1.

ART's black-box attack needs labelled membership data to train its attack model: it gets half of
the members and half of the non-members (a more generous threat model than ours). Every method is
scored on the other halves only. The split gives the candidates (members and non-members) more
records than the public data so that the low-FPR points rest on as many non-members as possible;
the printout says how many false positives each FPR point allows (floor(alpha x non-members): with
fewer than 1,000 evaluation non-members, "TPR at 0.1% FPR" is the TPR at zero false positives).
The LiRA/ART ratio leaves out methods whose scores take two values or fewer (ART's rule-based
attack answers member/non-member only, so its low-FPR TPR is a single operating point, not a ROC).

    python benchmarks/membership.py [--epochs 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

FRACTIONS = {"members": 0.25, "nonmembers": 0.4, "public": 0.3, "evaluation": 0.05}


def _timed_reference(job: Any) -> float:
    """Train one reference model in a worker; return the CPU seconds the worker spent on it."""
    from invguard.attacks.membership.common import train_reference

    t0 = time.process_time()
    train_reference(job)
    return time.process_time() - t0


def _noop(_: int) -> int:
    import torch

    return int(torch.get_num_threads())


def allowed_false_positives(alpha: float, nonmembers: int) -> int:
    """How many non-members the ROC point "TPR at FPR <= alpha" may flag."""
    return int(np.floor(alpha * nonmembers + 1e-9))


def metrics_row(name: str, scores: np.ndarray, member: np.ndarray, wall: float) -> tuple[str, dict]:
    from invguard.metrics.membership import membership_metrics

    m = membership_metrics(scores, member, n_boot=500, seed=0)
    m["distinct_scores"] = int(np.unique(np.asarray(scores)[np.isfinite(scores)]).size)
    cells = [format(m[k], ".3f") for k in ("tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "auc")]
    return f"{name:<34} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} {wall:>8.1f}", m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60, help="training epochs (target and reference models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speedup-only", action="store_true", help="only measure the 2-vs-1-worker speed-up")
    ap.add_argument("--cache", default="", help="reference-model cache folder (default: a fresh temp folder)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from invguard import attacks, data
    from invguard.attacks import RunContext
    from invguard.models import accuracy
    from invguard.models.train import fit
    from invguard.targets import TorchTarget

    splits = data.load("mnist5k", seed=args.seed, fractions=FRACTIONS)
    spec = {"arch": "mlp", "hidden": [256], "input_shape": list(splits.input_shape), "num_classes": 10}
    train = {"epochs": args.epochs}
    t0 = time.perf_counter()
    module, report = fit(spec, splits.members.X, splits.members.y, recipe="overfit", seed=args.seed, **train)
    held_out = accuracy(module, splits.nonmembers.X, splits.nonmembers.y)
    print(
        f"target: MLP(256) on {len(splits.members)} MNIST-5k members, recipe overfit ({args.epochs} epochs): "
        f"train acc {report.train_accuracy:.3f}, held-out acc {held_out:.3f} "
        f"({time.perf_counter() - t0:.1f} s); public {len(splits.public)}"
    )
    target = TorchTarget(module, input_shape=splits.input_shape, access="scores")

    # the evaluation halves (ART trains its attack model on the other halves)
    rng = np.random.default_rng(args.seed)
    nm, nn_ = len(splits.members), len(splits.nonmembers)
    m_perm, n_perm = rng.permutation(nm), rng.permutation(nn_)
    art_m, ev_m = m_perm[: nm // 2], m_perm[nm // 2 :]
    art_n, ev_n = n_perm[: nn_ // 2], n_perm[nn_ // 2 :]
    eval_rows = np.r_[ev_m, nm + ev_n]
    member = np.r_[np.ones(ev_m.size), np.zeros(ev_n.size)].astype(int)

    if args.speedup_only:
        speedup(spec, train, splits, ctx_method=multiprocessing.get_context("spawn"))
        return
    n_non = ev_n.size
    print(
        f"scored on {ev_m.size} members and {n_non} non-members: TPR@0.1%FPR allows "
        f"{allowed_false_positives(0.001, n_non)} false positive(s), TPR@1%FPR allows "
        f"{allowed_false_positives(0.01, n_non)}"
    )
    header = f"{'attack':<34} {'TPR@0.1%FPR':>22} {'TPR@1%FPR':>22} {'AUC':>22} {'wall s':>8}"
    print(header)
    print("-" * len(header))
    results = {}
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="invguard-bench-refs-"))
    ctx_method = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx_method) as pool:
        list(pool.map(_noop, range(2)))
        ctx = RunContext(executor=pool, cache_dir=cache)
        runs = [
            ("invguard threshold (loss)", "membership.threshold", {"statistic": "loss"}),
            ("invguard threshold (mod. entropy)", "membership.threshold", {"statistic": "modified_entropy"}),
            ("invguard shadow (8 models)", "membership.shadow", {"n_models": 8}),
            ("invguard RMIA (8 models)", "membership.rmia", {"n_models": 8}),
            ("invguard LiRA online (8 models)", "membership.lira", {"n_models": 8}),
            ("invguard LiRA online (16 models)", "membership.lira", {"n_models": 16}),
            ("invguard LiRA online (32 models)", "membership.lira", {"n_models": 32}),
        ]
        for label, name, kw in runs:
            extra = {} if name == "membership.threshold" else {"recipe": "overfit", "train": train}
            attack = attacks.get(name)(n_boot=0, **kw, **extra)
            r = attack.run(target, splits, seed=args.seed, context=ctx)
            row, m = metrics_row(label, r.arrays["scores"][eval_rows], member, r.wall_time_s)
            results[label] = m
            print(row, flush=True)

    # ART on the same model and split
    from art.attacks.inference.membership_inference import (
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
    )
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(splits.input_shape),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    Xm, ym, Xn, yn = splits.members.X, splits.members.y, splits.nonmembers.X, splits.nonmembers.y
    X_eval = np.concatenate([Xm[ev_m], Xn[ev_n]])
    y_eval = np.concatenate([ym[ev_m], yn[ev_n]])
    # ART gets the model's raw outputs (logits) and, as a second view, its probabilities
    prob_clf = PyTorchClassifier(
        model=torch.nn.Sequential(module, torch.nn.Softmax(dim=1)),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(splits.input_shape),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    for view, estimator in (("logits", clf), ("probs", prob_clf)):
        for kind in ("nn", "rf", "gb"):
            t0 = time.perf_counter()
            art = MembershipInferenceBlackBox(estimator, input_type="prediction", attack_model_type=kind)
            art.fit(x=Xm[art_m], y=ym[art_m], test_x=Xn[art_n], test_y=yn[art_n])
            s = np.asarray(art.infer(X_eval, y_eval, probabilities=True)).reshape(len(y_eval), -1)[:, -1]
            label = f"ART black-box ({kind}, {view})"
            row, m = metrics_row(label, s, member, time.perf_counter() - t0)
            results[label] = m
            print(row, flush=True)
    t0 = time.perf_counter()
    rule = MembershipInferenceBlackBoxRuleBased(clf)
    s = np.asarray(rule.infer(X_eval, y_eval)).reshape(-1).astype(float)
    row, m = metrics_row("ART rule-based", s, member, time.perf_counter() - t0)
    results["ART rule-based"] = m
    print(row, flush=True)

    lira = results["invguard LiRA online (32 models)"]["tpr_at_fpr_0.001"].value
    graded = {k: v for k, v in results.items() if k.startswith("ART") and v["distinct_scores"] > 2}
    binary = sorted(k for k in results if k.startswith("ART") and k not in graded)
    if binary:
        print(
            f"\nleft out of the ratio (scores take <= 2 values, no ROC to read a low-FPR point from): "
            f"{', '.join(binary)}"
        )
    fp = allowed_false_positives(0.001, n_non)
    art_best = max((v["tpr_at_fpr_0.001"].value for v in graded.values()), default=float("nan"))
    if not graded:
        verdict = "no ART method with graded scores to compare against"
    elif art_best == 0:
        verdict = f"undefined (ART's graded methods find no member at {fp} false positive(s))"
    else:
        verdict = f"{lira / art_best:.1f}x"
    print(
        f"LiRA (32) TPR@0.1%FPR / ART's best graded method: {lira:.3f} / {art_best:.3f} = {verdict} "
        f"(at {fp} false positive(s) among {n_non} non-members)"
    )

    speedup(spec, train, splits, ctx_method=ctx_method)


def speedup(spec: dict, train: dict, splits: Any, ctx_method: Any) -> None:
    """Reference-model training through a process pool: 2 workers vs 1, interleaved, no cache."""
    from invguard.attacks import RunContext
    from invguard.attacks.membership.common import ReferenceJob, ReferenceSpec, paired_masks

    # reference-model training: 2 process-pool workers vs 1 (no cache)
    ref = ReferenceSpec(spec=spec, recipe="overfit", overrides=train)
    X = np.concatenate([splits.public.X, splits.members.X, splits.nonmembers.X]).astype(np.float32)
    Y = np.concatenate([splits.public.y, splits.members.y, splits.nonmembers.y])
    masks = paired_masks(4, len(Y), seed=12345)
    jobs = [ReferenceJob(ref, 1000 + i, X, Y, np.flatnonzero(mk), X[:1, None]) for i, mk in enumerate(masks)]
    walls: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, float] = {1: 0.0, 2: 0.0}
    for workers in (1, 2, 2, 1):  # interleaved: the machine is shared, its load drifts
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx_method) as pool:
            list(pool.map(_noop, range(2 * workers)))  # start the workers before timing
            t0 = time.perf_counter()
            cpu[workers] += sum(RunContext(executor=pool).map(_timed_reference, jobs))
            walls[workers].append(time.perf_counter() - t0)
    one, two = sum(walls[1]), sum(walls[2])
    w1, w2 = (" + ".join(f"{w:.1f}" for w in walls[k]) for k in (1, 2))
    print(
        f"reference-model training, {len(jobs)} models, two runs each: 1 worker {w1} s, 2 workers {w2} s: "
        f"speed-up {one / two:.2f}x (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)\n"
        f"CPU seconds per wall second (how much the workers actually ran in parallel): 1 worker "
        f"{cpu[1] / one:.2f}, 2 workers {cpu[2] / two:.2f}; CPU seconds per model: 1 worker "
        f"{cpu[1] / (2 * len(jobs)):.1f}, 2 workers {cpu[2] / (2 * len(jobs)):.1f}"
    )


if __name__ == "__main__":
    main()
