"""Gradient leakage in federated learning, measured side by side in one run.

    python benchmarks/gradient.py [--quick] [--breaching /path/to/venv/bin/python]

1. MNIST-5k CNN, batch 1: Inverting Gradients (ours) and breaching's ``invertinggradients`` on the
   same model, the same observed gradients and the same iteration count; PSNR / SSIM / label
   recovery and wall time per reconstruction (breaching runs in its own virtualenv, given by
   ``--breaching``; without it its published numbers are quoted).
2. MNIST-5k CNN, batch 8: count-based label recovery and IG SSIM.
3. The analytic attack on the digits MLP, batch 1 (exact?).
4. FedAvg with 5 local steps (IG unrolling the client's steps).
5. Defence curves on the digits MLP: secure aggregation with K clients, client-level DP (epsilon
   from the RDP accountant), top-k compression, larger batches and more local steps. Each point:
   the same attack on the same round-1 updates (SSIM with its CI, beside the public-mean
   baseline) and the model's utility (held-out accuracy) after N federated rounds with that
   defence.

Snapshots: ``init`` is round 1 of a federation (a freshly initialised model; breaching's default
setting); ``trained`` is the reference model trained on the members (a federation late in
training). Every number is a mean over updates with a 95% bootstrap CI over updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from invguard import data, models  # noqa: E402
from invguard.attacks.gradient.analytic import AnalyticRecovery  # noqa: E402
from invguard.attacks.gradient.inverting import InvertingGradients  # noqa: E402
from invguard.attacks.gradient.labels import recover_labels  # noqa: E402
from invguard.federated import DPConfig, FederatedSetup  # noqa: E402
from invguard.federated.simulation import Simulation  # noqa: E402
from invguard.judges.gradient import label_overlap, match  # noqa: E402
from invguard.metrics.inversion import class_metric, pixel_similarity  # noqa: E402

BREACHING_DLG = "breaching's DLG example (ConvNet, its README): 23.4 dB PSNR, SSIM 0.876"


def init_model(arch: str, shape: list[int], seed: int = 0) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build({"arch": arch, "input_shape": shape, "num_classes": 10}).eval()


def ci(values: np.ndarray, clusters: np.ndarray) -> str:
    m = class_metric(np.asarray(values, dtype=float), clusters, n_boot=500, seed=0)
    return f"{m:.3f}" if m.low is not None else f"{m.value:.3f}"


def attack_updates(attack: Any, module: Any, obs: list[Any], splits: Any) -> dict[str, Any]:
    """Run ``attack`` on each update; score after optimal matching; mean with CIs over updates."""
    sims, psnrs, base, labs, clusters, secs = [], [], [], [], [], []
    shape = tuple(splits.input_shape)
    mean = splits.public.X.mean(axis=0)
    rng = np.random.default_rng(0)
    for i, o in enumerate(obs):
        X, y = splits.members.X[o.truth].astype(float), splits.members.y[o.truth]
        t0 = time.perf_counter()
        lab = recover_labels(module, o, 10, splits.public)
        rec, _ = attack._reconstruct(module, o, lab, shape, splits.public, rng)
        secs.append(time.perf_counter() - t0)
        rec = rec[match(rec, X)]
        s, p, _, _ = pixel_similarity(rec, X)
        b, _, _, _ = pixel_similarity(np.broadcast_to(mean, X.shape).astype(float), X)
        sims.extend(s)
        psnrs.extend(np.where(np.isfinite(p), p, 100.0))
        base.extend(b)
        labs.append(label_overlap(lab, y) / len(y))
        clusters.extend([i] * len(y))
    c = np.asarray(clusters)
    return {
        "ssim": ci(np.asarray(sims), c),
        "psnr": ci(np.asarray(psnrs), c),
        "baseline_ssim": ci(np.asarray(base), c),
        "labels": float(np.mean(labs)),
        "s_per_update": float(np.mean(secs)),
        "ssim_value": float(np.mean(sims)),
        "baseline_value": float(np.mean(base)),
    }


def observe(module: Any, splits: Any, setup: FederatedSetup, seed: int = 0) -> list[Any]:
    return Simulation(module, splits.members.X, splits.members.y, setup, np.random.default_rng(seed)).run()


def utility(module: Any, splits: Any, setup: FederatedSetup, rounds: int) -> float:
    """Held-out accuracy after ``rounds`` federated rounds from ``module`` under ``setup``."""
    sim = Simulation(module, splits.members.X, splits.members.y, setup, np.random.default_rng(1))
    sim.run(rounds, observe=[])
    return sim.accuracy(splits.nonmembers.X, splits.nonmembers.y)


def breaching_run(python: str, module: Any, spec: dict[str, Any], o: Any, iterations: int, seed: int) -> Any:
    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in.npz", Path(d) / "out.npz"
        arrays: dict[str, Any] = {
            "spec": json.dumps(spec),
            "attack": "invertinggradients",
            "n_params": len(o.update),
            "iterations": iterations,
            "batch": o.batch_size,
            "known_labels": 0,
            "labels": np.zeros(o.batch_size, dtype=np.int64),
            "seed": seed,
        }
        for i, (p, g) in enumerate(zip(o.params, o.update, strict=True)):
            arrays[f"p{i}"], arrays[f"g{i}"] = p, g
        np.savez(inp, **arrays)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [python, str(ROOT / "benchmarks" / "_breaching_peer.py"), str(inp), str(out)],
            check=True,
            env=env,
            capture_output=True,
        )
        z = np.load(out)
        return z["data"].astype(float), z["labels"], float(z["wall"])


def section_mnist_batch1(args: argparse.Namespace, splits: Any) -> None:
    print("\n== 1. MNIST-5k CNN, batch 1: ours vs breaching (same model, gradients, iterations)")
    trained, _ = models.reference("mnist5k-cnn")
    spec = {"arch": "cnn", "input_shape": [1, 28, 28], "num_classes": 10}
    n = 2 if args.quick else 4
    ig = InvertingGradients(iterations=args.iterations, restarts=1)
    for snap, module in (("init", init_model("cnn", [1, 28, 28])), ("trained", trained)):
        obs = observe(module, splits, FederatedSetup(clients=n, batch_size=1))
        ours = attack_updates(ig, module, obs, splits)
        print(
            f"  {snap:7s} ours   IG({args.iterations} its + polish): PSNR {ours['psnr']} dB, "
            f"SSIM {ours['ssim']} (public mean {ours['baseline_ssim']}), labels {ours['labels']:.2f}, "
            f"{ours['s_per_update']:.1f} s/rec"
        )
        if not args.breaching:
            print(f"  {snap:7s} breaching: not run (no --breaching); published: {BREACHING_DLG}")
            continue
        sims, psnrs, labs, walls = [], [], [], []
        for i, o in enumerate(obs):
            X, y = splits.members.X[o.truth].astype(float), splits.members.y[o.truth]
            try:
                rec, lab, wall = breaching_run(args.breaching, module, spec, o, args.iterations, i)
            except (subprocess.CalledProcessError, OSError) as e:
                print(f"  {snap:7s} breaching failed: {e}")
                break
            s, p, _, _ = pixel_similarity(np.clip(rec, 0, 1), X)
            sims.append(s[0])
            psnrs.append(p[0] if np.isfinite(p[0]) else 100.0)
            labs.append(label_overlap(np.asarray(lab).reshape(-1), y))
            walls.append(wall)
        if walls:
            c = np.arange(len(walls))
            print(
                f"  {snap:7s} breaching IG({args.iterations} its): PSNR {ci(np.asarray(psnrs), c)} dB, SSIM "
                f"{ci(np.asarray(sims), c)}, labels {np.mean(labs):.2f}, {np.mean(walls):.1f} s/rec; "
                f"wall time ours/breaching = {ours['s_per_update'] / np.mean(walls):.2f}"
            )


def section_mnist_batch8(args: argparse.Namespace, splits: Any) -> None:
    print("\n== 2. MNIST-5k CNN, batch 8")
    trained, _ = models.reference("mnist5k-cnn")
    for snap, module in (("init", init_model("cnn", [1, 28, 28])), ("trained", trained)):
        obs = observe(module, splits, FederatedSetup(clients=16, batch_size=8))
        y = splits.members.y
        acc = [label_overlap(recover_labels(module, o, 10, splits.public), y[o.truth]) / 8 for o in obs]
        rep = sum(len(set(y[o.truth])) < 8 for o in obs)
        print(
            f"  {snap:7s} count-based labels: {np.mean(acc):.3f} over {len(obs)} updates "
            f"({rep} with repeated labels)"
        )
        if snap == "init":
            k = 1 if args.quick else 2
            r = attack_updates(
                InvertingGradients(iterations=args.iterations, restarts=1), module, obs[:k], splits
            )
            print(
                f"  {snap:7s} IG batch 8: SSIM {r['ssim']} (public mean {r['baseline_ssim']}), "
                f"PSNR {r['psnr']} dB, {r['s_per_update']:.1f} s/update"
            )


def section_analytic(args: argparse.Namespace) -> None:
    print("\n== 3. Analytic recovery through the first FC layer, digits MLP, batch 1")
    module, splits = models.reference("digits-mlp")
    obs = observe(module, splits, FederatedSetup(clients=16, batch_size=1))
    r = attack_updates(AnalyticRecovery(), module, obs, splits)
    print(f"  trained digits MLP: PSNR {r['psnr']} dB, SSIM {r['ssim']}, labels {r['labels']:.2f}")
    mnist = data.load("mnist5k", seed=0)
    m2, _ = models.reference("mnist5k-mlp-overfit")
    r2 = attack_updates(
        AnalyticRecovery(), m2, observe(m2, mnist, FederatedSetup(clients=8, batch_size=1)), mnist
    )
    print(f"  confirmed on the MNIST-5k MLP: PSNR {r2['psnr']} dB, SSIM {r2['ssim']}")


def section_fedavg(args: argparse.Namespace, splits: Any) -> None:
    print("\n== 4. FedAvg, 5 local steps (IG unrolls the client's steps)")
    module = init_model("cnn", [1, 28, 28])
    n = 2 if args.quick else 3
    for B in (1, 4):
        setup = FederatedSetup(
            clients=n,
            batch_size=B,
            algorithm="fedavg",
            local_steps=5,
            local_lr=0.1,
            local_batch=1 if B > 1 else None,
        )
        r = attack_updates(
            InvertingGradients(iterations=args.iterations, restarts=1),
            module,
            observe(module, splits, setup),
            splits,
        )
        print(
            f"  MNIST CNN init, batch {B}, 5 steps: SSIM {r['ssim']} (public mean {r['baseline_ssim']}), "
            f"PSNR {r['psnr']} dB, labels {r['labels']:.2f}, {r['s_per_update']:.1f} s/update"
        )


def section_defences(args: argparse.Namespace) -> None:
    print("\n== 5. Defence curves, digits MLP from init (round-1 updates; utility after N rounds)")
    splits = data.load("digits", seed=0)
    module = init_model("mlp", [1, 8, 8])
    ig = InvertingGradients(iterations=args.curve_iterations, restarts=1)
    N = args.rounds
    base = dict(clients=8, batch_size=8, local_lr=0.5)

    def row(label: str, setup: FederatedSetup, extra: str = "") -> None:
        if not setup.sees_individual_updates:  # one aggregate per round: observe as many rounds
            setup = dataclasses.replace(setup, rounds=args.curve_updates)
        obs = observe(module, splits, setup)[: args.curve_updates]
        r = attack_updates(ig, module, obs, splits)
        u = utility(module, splits, setup, N)
        near = "at baseline" if r["ssim_value"] - r["baseline_value"] < 0.05 else "above baseline"
        print(
            f"  {label:34s} SSIM {r['ssim']:24s} public mean {r['baseline_ssim']:24s} ({near}); "
            f"labels {r['labels']:.2f}; utility {u:.3f}{extra}"
        )

    print("  -- secure aggregation (the server sees only the sum of K clients' batch-8 updates)")
    row("none (server reads each update)", FederatedSetup(**base))
    for K in (2, 4, 8):
        row(f"secure aggregation, K={K}", FederatedSetup(**{**base, "clients": K}, secure_aggregation=True))
    print("  -- client-level DP (clip 1, Gaussian noise z; epsilon after N rounds, delta 1e-5)")
    for z in (0.0, 0.01, 0.1, 0.3, 1.0):
        dp = DPConfig(clip=1.0, noise_multiplier=z, placement="client")
        eps = dp.epsilon(N)
        row(f"DP z={z:g}", FederatedSetup(**base, dp=dp), f"; epsilon {eps:.3g} after {N} rounds")
    print("  -- top-k compression (fraction of the update each client sends)")
    for k in (1.0, 0.3, 0.1, 0.01):
        row(f"top-k {k:g}", FederatedSetup(**base, topk=k))
    print("  -- batch size")
    for B in (1, 4, 16, 32):
        row(f"batch {B}", FederatedSetup(**{**base, "batch_size": B}))
    print("  -- local steps (FedAvg, mini-batches of 2)")
    for E in (1, 5, 20):
        row(
            f"FedAvg {E} local steps",
            FederatedSetup(**base, algorithm="fedavg", local_steps=E, local_batch=2),
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--breaching", default=None, help="python of a virtualenv with breaching installed")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--curve-iterations", type=int, default=300)
    ap.add_argument("--curve-updates", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--sections", default="1,2,3,4,5")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mnist = data.load("mnist5k", seed=0)
    want = set(args.sections.split(","))
    t0 = time.perf_counter()
    if "1" in want:
        section_mnist_batch1(args, mnist)
    if "2" in want:
        section_mnist_batch8(args, mnist)
    if "3" in want:
        section_analytic(args)
    if "4" in want:
        section_fedavg(args, mnist)
    if "5" in want:
        section_defences(args)
    print(f"\n(total {time.perf_counter() - t0:.0f} s, torch threads 1)")


if __name__ == "__main__":
    main()
