"""Model inversion: invguard's attacks side by side with ART's MIFace, measured the same way.

On the digits MLP and the MNIST-5k CNN reference models, in the shared-class and the disjoint-class
(public data holds digits 0-4; classes 5-9 attacked) settings, prints per attack: attack accuracy
of the independent evaluation classifier (95% CI), KNN distance, SSIM, queries per class, search
and total wall time, both baselines (no-model public prior; public ranking through the target)
and the private-specificity verdict. The evaluator is the robust one of
``invguard.models.evaluator`` (an adversarially trained CNN and MLP that must agree), so images that
only fool the target are not credited. ART's MIFace (Fredrikson et al. 2015, as implemented in the
adversarial-robustness-toolbox) runs on the same model with its own defaults (10,000 iterations)
and is scored by the same evaluator; the ratios ours/ART are for attack accuracy and wall time
(search only; ART does nothing else).
Writes a PNG grid per model and setting (reconstruction beside its nearest private member) to
benchmarks/out/, and an exposure sweep on the digits MLP.

Run: ``python benchmarks/inversion.py`` (needs the bench extra: ``pip install -e '.[bench]'``).
``--quick`` runs digits only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

import invguard as ig
from invguard import models, policies
from invguard.attacks import RunContext
from invguard.attacks.inversion.sweep import exposure_sweep
from invguard.judges.inversion.scoring import score_reconstructions
from invguard.models.evaluator import build_evaluator
from invguard.targets import TorchTarget

OUT = Path(__file__).parent / "out"
CACHE = Path(os.environ.get("INVGUARD_CACHE", ".invguard/cache"))
PER_CLASS = 5


def art_miface(module, splits, classes, max_iter):
    """ART's MIFace with its defaults (window 100, threshold 0.99, learning rate 0.1) on the same
    model, outputting probabilities as MIFace expects; returns (images, seconds)."""
    from art.attacks.inference.model_inversion import MIFace
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=torch.nn.Sequential(module, torch.nn.Softmax(dim=1)),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(splits.input_shape),
        nb_classes=splits.num_classes,
        clip_values=(0.0, 1.0),
    )
    y = np.repeat(classes, PER_CLASS)
    attack = MIFace(
        clf,
        max_iter=max_iter,
        window_length=100,
        threshold=0.99,
        learning_rate=0.1,
        batch_size=len(y),
        verbose=False,
    )
    t0 = time.perf_counter()
    x = attack.infer(None, y)
    return np.asarray(x, dtype=np.float64), time.perf_counter() - t0


def fmt(m):
    return "   -   " if m is None else f"{m.value:.2f} [{m.low:.2f},{m.high:.2f}]"


def row(name, access, r):
    m = r.metrics
    return {
        "method": name,
        "access": access,
        "acc": m["attack_accuracy"],
        "top5": m["attack_accuracy_top5"].value,
        "knn": m["knn_distance"].value,
        "ssim": m["ssim"].value,
        "q": r.info["queries_per_class"],
        "search": r.info["search_time_s"],
        "wall": r.wall_time_s,
        "prior": m["baseline_prior_accuracy"].value,
        "rank": m["baseline_public_ranking_accuracy"].value
        if "baseline_public_ranking_accuracy" in m
        else None,
        "spec_p": m["private_specificity_p"].value,
        "swap_p": m["role_swap_p"].value if "role_swap_p" in m else None,
        "verdict": r.findings[0].title,
        "images": r.arrays["reconstructions"],
        "nearest": r.arrays["nearest_private"],
    }


def print_table(title, rows):
    print(f"\n== {title}")
    head = (
        f"{'method':<26}{'access':<9}{'attack acc [95% CI]':<22}{'top5':>5}{'KNN':>8}{'SSIM':>6}"
        f"{'q/class':>9}"
        f"{'search s':>9}{'wall s':>8}{'prior':>7}{'ranking':>8}{'spec p':>8}{'swap p':>8}  verdict"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        rank = "   -" if r["rank"] is None else f"{r['rank']:.2f}"
        swap = "   -" if r["swap_p"] is None else f"{r['swap_p']:.3f}"
        spec = "   -" if r["spec_p"] is None else f"{r['spec_p']:.3f}"
        print(
            f"{r['method']:<26}{r['access']:<9}{fmt(r['acc']):<22}{r['top5']:>5.2f}{r['knn']:>8.1f}{r['ssim']:>6.2f}"
            f"{r['q']:>9.0f}{r['search']:>9.2f}{r['wall']:>8.1f}{r['prior']:>7.2f}{rank:>8}{spec:>8}{swap:>8}"
            f"  {r['verdict']}"
        )


def grid(path, rows, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = []
    for r in rows:
        cols.append((r["method"], r["images"]))
        cols.append(("nearest private", r["nearest"]))
    fig, axes = plt.subplots(len(classes), len(cols), figsize=(1.15 * len(cols), 1.2 * len(classes) + 0.6))
    for i, c in enumerate(classes):
        k = i * PER_CLASS
        for j, (name, imgs) in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(np.asarray(imgs[k, 0]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name.replace(" (", "\n("), fontsize=6)
            if j == 0:
                ax.set_ylabel(f"class {c}", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench(model_name, setting, art_iters, ctx, goals):
    module, splits = models.reference(model_name, seed=0)
    if setting == "disjoint-class":
        splits = splits.with_public_classes([0, 1, 2, 3, 4])
    classes = np.asarray(splits.private_classes)
    evaluator = build_evaluator(splits, target_arch=module.invguard_spec["arch"], cache_dir=ctx.cache_dir)
    print(
        f"\n#### {model_name}, {setting}: attacked classes {classes.tolist()}; evaluator {evaluator.arch} "
        f"trained on the evaluation split (held-out accuracy {evaluator.holdout_accuracy:.3f}); "
        "target held-out accuracy "
        f"{models.accuracy(module, splits.nonmembers.X, splits.nonmembers.y):.3f}"
    )

    def raw():
        return TorchTarget(module, input_shape=tuple(splits.input_shape))

    runs = [
        ("white-box", "inversion.whitebox", {}, lambda: raw(), "WHITEBOX"),
        ("generative (gradients)", "inversion.generative", {}, lambda: raw(), "WHITEBOX"),
        ("black-box NES", "inversion.blackbox", {}, lambda: policies.ScoresOnly().wrap(raw()), "SCORES"),
        ("generative (NES)", "inversion.generative", {}, lambda: policies.ScoresOnly().wrap(raw()), "SCORES"),
        ("label-only BREP-MI", "inversion.label_only", {}, lambda: policies.LabelOnly().wrap(raw()), "LABEL"),
    ]
    rows = []
    results = {}
    for label, name, kw, make, access in runs:
        r = ig.attacks.get(name)(**kw).run(make(), splits, seed=0, context=ctx)
        results[label] = r
        rows.append(row(label, access, r))

    # ART's MIFace on the same model, scored by the same evaluator and the same convergence rule
    x_art, t_art = art_miface(module, splits, classes, art_iters)
    per_rec = np.repeat(classes, PER_CLASS)
    pred = raw().predict(x_art)
    conv = pred.labels == per_rec
    s = score_reconstructions(x_art, per_rec, splits, evaluator, converged=conv, n_boot=1000, seed=0)
    wb = results["white-box"]
    art_row = {
        "method": f"ART MIFace ({art_iters} it)",
        "access": "WHITEBOX",
        "acc": s.metrics["attack_accuracy"],
        "top5": s.metrics["attack_accuracy_top5"].value,
        "knn": s.metrics["knn_distance"].value,
        "ssim": s.metrics["ssim"].value,
        "q": art_iters * PER_CLASS,
        "search": t_art,
        "wall": t_art,
        "prior": wb.metrics["baseline_prior_accuracy"].value,
        "rank": wb.metrics["baseline_public_ranking_accuracy"].value,
        "spec_p": None,
        "swap_p": None,
        "verdict": f"{int(conv.sum())}/{len(conv)} reach the class on the target",
        "images": x_art,
        "nearest": s.nearest_private,
    }
    rows.append(art_row)
    print_table(f"{model_name}, {setting}", rows)
    ours_acc = wb.metrics["attack_accuracy"].value
    art_acc = art_row["acc"].value
    acc_ratio = ours_acc / art_acc if art_acc > 0 else float("inf")
    time_ratio = wb.info["search_time_s"] / t_art
    print(
        f"ours/ART (white-box vs MIFace): attack accuracy {ours_acc:.2f}/{art_acc:.2f} = {acc_ratio:.2f}x; "
        f"wall time (search) {wb.info['search_time_s']:.2f}s/{t_art:.2f}s = {time_ratio:.3f}x "
        f"(total white-box run incl. baselines, evaluation and role-swap control: {wb.wall_time_s:.1f}s)"
    )
    ours_ssim, art_ssim = wb.metrics["ssim"].value, art_row["ssim"]
    ours_knn, art_knn = wb.metrics["knn_distance"].value, art_row["knn"]
    print(
        f"ours/ART similarity to private members: SSIM {ours_ssim:.2f}/{art_ssim:.2f} = "
        f"{ours_ssim / art_ssim:.2f}x; "
        f"KNN distance {ours_knn:.1f}/{art_knn:.1f} = {ours_knn / art_knn:.2f}x (lower is closer)"
    )
    png = OUT / f"inversion_{model_name}_{setting}.png"
    grid(png, [rows[0], rows[2], rows[4], art_row], classes)
    print(f"grid: {png}")

    acc = {label: results[label].metrics["attack_accuracy"].value for label in results}
    prior = results["label-only BREP-MI"].metrics["baseline_prior_accuracy"].value
    q = {label: results[label].info["queries_per_class"] for label in results}
    digits = model_name.startswith("digits")
    if setting == "shared-class":
        goals.append(
            (
                f"{model_name}: white-box >= {0.95 if digits else 0.9}",
                acc["white-box"] >= (0.95 if digits else 0.9),
            )
        )
        goals.append((f"{model_name}: white-box attack accuracy above ART's", ours_acc > art_acc))
        goals.append(
            (f"{model_name}: white-box closer to private members than ART (SSIM)", ours_ssim > art_ssim)
        )
        goals.append((f"{model_name}: white-box <= 1/5 of ART's wall time", time_ratio <= 0.2))
        for label in ("black-box NES", "generative (NES)", "label-only BREP-MI"):
            goals.append(
                (
                    f"{model_name} shared: {label} >= 0.8 within 2000 q/class",
                    acc[label] >= 0.8 and q[label] <= 2000,
                )
            )
    else:
        goals.append((f"{model_name} disjoint: white-box >= 0.8", acc["white-box"] >= 0.8))
        for label in ("black-box NES", "generative (NES)"):
            goals.append(
                (
                    f"{model_name} disjoint: {label} >= 0.5 within 2000 q/class",
                    acc[label] >= 0.5 and q[label] <= 2000,
                )
            )
        goals.append(
            (
                f"{model_name} disjoint: label-only >= 3x prior baseline "
                f"({acc['label-only BREP-MI']:.2f} vs {prior:.2f})",
                acc["label-only BREP-MI"] >= 3 * prior and acc["label-only BREP-MI"] > 0,
            )
        )


def sweep(ctx):
    module, splits = models.reference("digits-mlp", seed=0)
    splits = splits.with_public_classes([0, 1, 2, 3, 4])
    t0 = time.perf_counter()
    rows = exposure_sweep(
        ig.attacks.get("inversion.whitebox")(),
        TorchTarget(module, input_shape=tuple(splits.input_shape)),
        splits,
        policies=["noise=0.1", ("top-1", "top_k=1")],
        context=ctx,
    )
    print(f"\n== exposure sweep, digits-mlp, disjoint-class ({time.perf_counter() - t0:.1f}s)")
    print(
        f"{'exposure':<14}{'access':<10}{'attack used':<24}{'attack acc [95% CI]':<22}{'KNN':>8}"
        f"{'utility':>9}{'argmax agr':>11}"
    )
    for r in rows:
        acc = f"{r['attack_accuracy']:.2f} [{r['attack_accuracy_low']:.2f},{r['attack_accuracy_high']:.2f}]"
        used = r["attack"] + (" *" if r["substituted_for"] else "")
        print(
            f"{r['exposure']:<14}{r['access']:<10}{used:<24}{acc:<22}{r['knn_distance']:>8.1f}{r['utility']:>9.3f}"
            f"{r['argmax_agreement']:>11.3f}"
        )
    print("* the strongest attack allowed at that exposure, in place of inversion.whitebox")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument(
        "--art-iters-digits", type=int, default=10000, help="MIFace max_iter on digits (ART default)"
    )
    ap.add_argument(
        "--art-iters-mnist", type=int, default=10000, help="MIFace max_iter on MNIST-5k (ART default)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = RunContext(cache_dir=CACHE)
    goals: list[tuple[str, bool]] = []
    t0 = time.perf_counter()
    plan = [("digits-mlp", args.art_iters_digits)]
    if not args.quick:
        plan.append(("mnist5k-cnn", args.art_iters_mnist))
    for model_name, iters in plan:
        for setting in ("shared-class", "disjoint-class"):
            bench(model_name, setting, iters, ctx, goals)
    sweep(ctx)
    print(f"\n== goals (issue #3), total {time.perf_counter() - t0:.0f}s")
    for text, ok in goals:
        print(f"  [{'met' if ok else 'NOT met'}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
