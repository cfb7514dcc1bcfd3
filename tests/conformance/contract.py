"""What every attack conformance world checks the same way: seeded results compare equal but for
timings, and a result round-trips through JSON, its audit document matches the published schema and
the HTML report renders it."""

from __future__ import annotations

import json
from typing import Any

from invguard.core import BudgetExhausted
from invguard.core.result import AttackResult


def _timeless(x: Any) -> Any:
    """``x`` without timings (``*_time_s``, ``seconds``): the only part of a result a seed leaves free."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if not (k.endswith("time_s") or k == "seconds")}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


def comparable(r: AttackResult) -> str:
    return json.dumps(_timeless(r.to_json()), sort_keys=True)


def rendered(r: AttackResult, cfg: Any, splits: Any, *, kind: str, model: str) -> str:
    """Check ``r`` round-trips and its one-job audit document (under ``cfg``) matches the schema;
    return the HTML page rendered from that document."""
    from invguard.audit.results import build_results
    from invguard.report import html
    from invguard.report.json import validate

    doc = r.to_json()
    again = AttackResult.from_json(json.loads(json.dumps(doc))).to_json()
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(doc))
    out = {**doc, "job": "a0", "exposure": "as deployed", "policy": None, "sweep": False}
    out.update(status="ok", error=None, worker="here", job_wall_time_s=r.wall_time_s)

    target = type("Described", (), {"kind": kind, "name": model, "digest": "0" * 16})()
    results = build_results(
        cfg,
        [out],
        splits=splits,
        target=target,
        target_described="WHITEBOX",
        started=0.0,
        timings={},
        executor="in-process",
        config_text=None,
    )
    assert validate(json.loads(json.dumps(results, default=float))) == []
    page: str = html.render(results)
    assert r.attack in page and "Traceback" not in page
    return page


def within_budget(
    attack: Any, target: Any, splits: Any, ctx: Any, holder: Any, budget: int
) -> AttackResult | None:
    """Run ``attack`` on ``target`` (seed 2): it may stop on its budget, but ``holder`` (the object
    that keeps the count) and the result never count more than ``budget`` queries."""
    try:
        r: AttackResult | None = attack.run(target, splits, seed=2, context=ctx)
    except BudgetExhausted:
        r = None
    assert holder.queries_used <= budget
    if r is not None:
        assert r.queries_used <= budget
    return r
