"""Language-model leakage on the tiny reference LM, through a local target and through the guard.

The model: ``pydoc-gpt2-tiny`` (GPT-2, 2 layers, 96 wide, byte-level BPE) trained on CPU on the
members of 300 documents of ``pydoc_data.topics`` with canaries ``"the pin of <name> is <5
digits>"`` (|R| = 10^5) inserted 0, 1, 10 and 100 times (3 canaries each); ``--model
stdlib-gpt2-tiny`` is the same recipe on a second corpus, the standard library's docstrings.
Views of it, side by side in one run (``--views`` picks some):

- ``local``: the model in process (white box);
- ``guard/full``, ``guard/top5``, ``guard/text``: the guard (OpenAI-compatible routes, proxying to
  the model served by ``invguard.models.lm_server``) under a role with full log-probabilities,
  top-5 log-probabilities rounded to 2 decimals, and text only.

For each view: canary exposure per insertion count (exact by enumeration locally, beside the
skew-normal approximation fitted to the lower tail and to all samples; the approximation alone
through the guard, where exact enumeration would cost |R| queries; from generations alone at
TEXT), with 95% bootstrap CIs over the canaries; the share of canaries inserted >= 10 times that
extraction recovers, by ranking; membership AUC and TPR at 0.1% FPR for loss, zlib, Min-K% and
reference calibration; and the wall time of every attack. The Secret Sharer's reference figures
(a character LSTM on Shakespeare, 5-character secrets): 1.4 / 3.5 / 6.4 bits for 1 / 10 / 100
insertions.

    python benchmarks/text.py            # the full run
    python benchmarks/text.py --quick    # the tests' micro LM, fewer samples (a smoke run)
    python benchmarks/text.py --model stdlib-gpt2-tiny --views local   # the second corpus
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

SECRET_SHARER = {1: 1.4, 10: 3.5, 100: 6.4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the micro LM and small samples")
    ap.add_argument("--cache", default=os.environ.get("INVGUARD_CACHE", ".invguard/cache"))
    ap.add_argument("--out", default="reports/bench-text.json")
    ap.add_argument("--show-secrets", action="store_true", help="print extracted strings in clear")
    ap.add_argument(
        "--model",
        default=None,
        help="the reference LM (default pydoc-gpt2-tiny; stdlib-gpt2-tiny: the same model on the standard "
        "library's docstrings, the second corpus)",
    )
    ap.add_argument(
        "--views",
        default="local,guard/full,guard/top5,guard/text",
        help="comma-separated views to run (local, guard/full, guard/top5, guard/text)",
    )
    args = ap.parse_args()

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import serve

    from invguard.attacks import get
    from invguard.attacks.base import RunContext
    from invguard.guard import from_dict
    from invguard.guard.app import Guard
    from invguard.guard.auth import hash_key
    from invguard.models.lm import reference_lm
    from invguard.models.lm_server import openai_app
    from invguard.targets.hf_lm import HFLMTarget
    from invguard.targets.openai import OpenAITarget

    cache = Path(args.cache)
    name = args.model or ("pydoc-gpt2-micro" if args.quick else "pydoc-gpt2-tiny")
    wanted = [v.strip() for v in args.views.split(",") if v.strip()]
    t0 = time.perf_counter()
    path, splits = reference_lm(name, cache_dir=cache)
    meta = json.loads((path / "invguard_lm.json").read_text())
    print(
        f"reference LM {name}: trained in {meta['train_seconds']:.0f} s ({meta['steps']} steps, "
        f"{meta['tokens']} tokens, final loss {meta['final_loss']:.2f}); "
        f"loaded in {time.perf_counter() - t0:.1f} s"
    )
    local = HFLMTarget(path)
    ctx = RunContext(cache_dir=cache)
    q = args.quick
    ref_spec = {
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "block_size": 64,
        "vocab_size": 512,
        "epochs": 4 if q else 12,
    }
    keys = {r: "k-" + secrets.token_hex(12) for r in ("full", "top5", "text")}
    rate = {"burst": 100000, "per_second": 100000}
    results: dict[str, dict[str, dict]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        upstream = stack.enter_context(serve(openai_app(HFLMTarget(path), model_name="lm")))
        cfg = {
            "model": {
                "name": "lm",
                "kind": "openai",
                "upstream": {"url": upstream, "timeout": 600},
                "upstream_model": "lm",
            },
            "roles": {
                "full": {"policy": "logprobs", "rate": rate},
                "top5": {"policy": "top_logprobs=5 round=2", "rate": rate},
                "text": {"policy": "strip_logprobs", "rate": rate},
            },
            "auth": {"keys": [{"id": r, "sha256": hash_key(k), "role": r} for r, k in keys.items()]},
            "audit": {"path": str(tmp / "audit.jsonl"), "fsync": False},
        }
        guard_url = stack.enter_context(serve(Guard(from_dict(cfg)).app))
        views = {
            "local": local,
            "guard/full": OpenAITarget(
                guard_url, model="lm", access="logprobs", api_key=keys["full"], timeout=600
            ),
            "guard/top5": OpenAITarget(
                guard_url,
                model="lm",
                access="topk_logprobs",
                api_key=keys["top5"],
                max_top_logprobs=5,
                timeout=600,
            ),
            "guard/text": OpenAITarget(
                guard_url, model="lm", access="text", api_key=keys["text"], timeout=600
            ),
        }
        unknown = sorted(set(wanted) - set(views))
        if unknown:
            raise SystemExit(f"--views: unknown {unknown}; known: {sorted(views)}")
        views = {v: t for v, t in views.items() if v in wanted}
        samples = 200 if q else 1000
        plan = []  # (view, label, attack): the local white-box figures first
        for view in views:
            if view == "local":
                plan.append((view, "exposure", get("text.exposure")(samples=samples)))
            elif view != "guard/text":
                plan.append((view, "exposure", get("text.exposure")(samples=samples // 4, max_exact=0)))
            if view in ("local", "guard/text"):
                plan.append(
                    (
                        view,
                        "exposure_generations",
                        get("text.exposure_generations")(samples=100 if q else 200),
                    )
                )
            plan.append(
                (
                    view,
                    "extraction",
                    get("text.extraction")(
                        samples=120 if q else (600 if view == "local" else 300),
                        max_tokens=24 if q else 32,
                        top=20 if q else 50,
                        reference_spec=ref_spec,
                        show_secrets=args.show_secrets,
                    ),
                )
            )
            if view != "guard/text":
                for st in ("loss", "zlib", "min_k"):
                    plan.append((view, f"membership_{st}", get("text.membership")(statistic=st, n_boot=300)))
        for view in [v for v in ("local", "guard/full", "guard/top5") if v in views]:
            plan.append(
                (
                    view,
                    "membership_reference",
                    get("text.membership_reference")(n_models=2, spec=ref_spec, n_boot=300),
                )
            )
        for view, label, attack in plan:
            target = views[view]
            out = results.setdefault(view, {})
            try:
                attack.check_access(target)
            except Exception as e:
                out[label] = {"skipped": str(e)}
                continue
            t = time.perf_counter()
            res = attack.run(target, splits, seed=0, context=ctx)
            out[label] = {"result": res.to_json(), "wall_s": time.perf_counter() - t}
            keys = [
                k
                for k in res.metrics
                if k.startswith(("exposure", "approx", "canaries_recovered", "auc", "tpr_at_fpr_0.001"))
            ]
            shown = ", ".join(f"{k} {res.metrics[k]:.2f}" for k in keys)
            print(
                f"[{view}] {label}: {res.wall_time_s:.1f} s, {res.queries_used} queries; {shown}", flush=True
            )
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    report(results, splits)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nfull results: {args.out}")


def _m(res: dict, name: str) -> str:
    m = res["result"]["metrics"].get(name)
    if m is None or m["value"] is None:
        return "-"
    if m["low"] is None:
        return f"{m['value']:.2f}"
    return f"{m['value']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"


def report(results: dict, splits) -> None:
    counts = sorted({c.insertions for c in splits.canaries})
    per = len(splits.canaries) // len(counts)
    top = math.log2(splits.canary_format.space_size)
    print(f"\n== canary exposure (bits of log2|R| = {top:.1f}), mean over {per} canaries [95% bootstrap CI]")
    print("view            method                     " + "  ".join(f"{k:>3}x{'':18}" for k in counts))
    for view, out in results.items():
        for label in ("exposure", "exposure_generations"):
            r = out.get(label)
            if r is None or "result" not in r:
                continue
            rows = [
                (
                    label
                    if label != "exposure"
                    else ("exact (tree)" if view == "local" else "approx (skew-normal)"),
                    "exposure",
                )
            ]
            if view == "local" and label == "exposure":
                rows.append(("approx (skew-normal, tail)", "exposure_approx"))
                rows.append(("approx (skew-normal, all)", "exposure_approx_full"))
            for name, prefix in rows:
                print(f"{view:15} {name:26} " + "  ".join(f"{_m(r, f'{prefix}_{k}'):>22}" for k in counts))
    loc = results.get("local", {}).get("exposure", {}).get("result")
    if loc:
        err = loc["metrics"].get("approx_error_bits", {}).get("value")
        full = loc["metrics"].get("approx_full_error_bits", {}).get("value")
        print(
            f"largest |exact - approximated| over the canaries: {err:.2f} bits (lower-tail fit), "
            f"{full:.2f} bits (the paper's fit of all samples)"
        )
        line = ", ".join(
            f"{k}x: ours {loc['metrics'][f'exposure_{k}']['value']:.1f} vs {v}"
            for k, v in SECRET_SHARER.items()
            if f"exposure_{k}" in loc["metrics"]
        )
        print(f"Secret Sharer (char LSTM, Shakespeare, 5-char secrets): {line}")
    print("\n== extraction: share of canaries inserted >= 10 times recovered, by ranking (top-n of each)")
    for view, out in results.items():
        r = out.get("extraction", {}).get("result")
        if r is None:
            continue
        parts = [
            f"{k.removeprefix('canaries_recovered_')}: {_m({'result': r}, k)}"
            for k in r["metrics"]
            if k.startswith("canaries_recovered_")
        ]
        ctrl = [k for k in r["metrics"] if k.startswith("never_inserted_recovered_")]
        worst = max((r["metrics"][k]["value"] for k in ctrl), default=0.0)
        missing = list(r["info"].get("rankings_unavailable", {}))
        print(f"{view:12} {'; '.join(parts)}  (never-inserted found: {worst:.2f}; unavailable: {missing})")
    print("\n== membership: AUC and TPR at 0.1% FPR [95% CI]")
    for view, out in results.items():
        for label in ("membership_loss", "membership_zlib", "membership_min_k", "membership_reference"):
            r = out.get(label)
            if r is None:
                continue
            if "result" not in r:
                print(f"{view:12} {label:22} skipped: {r['skipped']}")
                continue
            print(f"{view:12} {label:22} AUC {_m(r, 'auc'):>20}  TPR@0.1%FPR {_m(r, 'tpr_at_fpr_0.001'):>20}")
    print("\n== wall time per attack (s, 2 shared CPU cores)")
    for view, out in results.items():
        print(f"{view:12} " + ", ".join(f"{k} {v['wall_s']:.0f}" for k, v in out.items() if "wall_s" in v))


if __name__ == "__main__":
    main()
