"""`invguard tradeoff`: the recommendation follows the gates (on the conservative CI end) within the
utility floor, and a tiny sweep runs end to end through the process pool."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from invguard.cli import app
from invguard.core.errors import ConfigError
from invguard.defences.report import tradeoff_rows
from invguard.defences.tradeoff import TradeoffConfig, decide, load_tradeoff_config, settings_of


def row(i, eps, util, tpr, cpu):
    u_lo, u_hi = util - 0.02, util + 0.02
    return {
        "id": f"s{i}",
        "label": "non-private" if eps is None else f"eps={eps:g}",
        "private": eps is not None,
        "status": "ok",
        "utility": {"value": util, "low": u_lo, "high": u_hi},
        "privacy": None if eps is None else {"epsilon": eps, "delta": 1e-5},
        "cost": {"wall_time_s": cpu, "cpu_time_s": cpu},
        "attacks": [
            {"attack": "membership.lira", "status": "ok", "info": {"nonmembers": 5000},
             "metrics": {"tpr_at_fpr_0.01": {"value": tpr[0], "low": tpr[1], "high": tpr[2]}}}
        ],
    }  # fmt: skip


def cfg(**kw):
    return TradeoffConfig.model_validate(
        {
            "attacks": [{"name": "membership.lira"}],
            "gates": ["membership.lira.tpr_at_fpr_0.01 <= 0.05"],
            "sweep": {"epsilon": ["inf", 8, 4, 2, 1]},
            **kw,
        }
    )


ROWS = [
    (None, 0.95, (0.20, 0.15, 0.25), 1.0),  # leaks: fails the gate
    (8.0, 0.93, (0.04, 0.02, 0.07), 2.0),  # CI straddles 0.05: inconclusive, not a pass
    (4.0, 0.90, (0.02, 0.01, 0.03), 2.5),  # passes, within the floor: the cheapest that qualifies
    (2.0, 0.86, (0.01, 0.00, 0.02), 2.4),  # passes, cheaper, but below the floor (low end 0.84 < 0.85)
    (1.0, 0.70, (0.01, 0.00, 0.02), 3.0),  # passes, far below the floor
]


def test_recommendation_follows_the_gates_within_the_utility_floor():
    doc = decide(cfg(utility_floor=0.85), [row(i, *r) for i, r in enumerate(ROWS)])
    by = {r["label"]: r for r in doc["settings"]}
    assert [o["status"] for o in by["non-private"]["gates"]] == ["fail"]
    assert [o["status"] for o in by["eps=8"]["gates"]] == ["inconclusive"]
    assert by["eps=2"]["passes_gates"] and not by["eps=2"]["utility_ok"]
    assert doc["recommendation"]["label"] == "eps=4"
    assert (
        "the cheapest setting to train (2.5 s CPU, 2.50x non-private training)"
        in doc["recommendation"]["text"]
    )
    assert by["eps=4"]["cost"]["ratio_to_non_private"] == 2.5
    assert set(doc["pareto"]) == {"s0", "s1", "s2", "s3"}  # eps=1 is dominated by eps=2


def test_utility_drop_and_no_qualifying_setting():
    doc = decide(cfg(max_utility_drop=0.01), [row(i, *r) for i, r in enumerate(ROWS)])
    assert doc["recommendation"]["setting"] is None
    text = doc["recommendation"]["text"]
    assert text.startswith("No setting passes every gate within held-out accuracy >= 0.940")
    assert "non-private: membership.lira.tpr_at_fpr_0.01 <= 0.05 (fail)" in text
    assert "eps=8: membership.lira.tpr_at_fpr_0.01 <= 0.05 (inconclusive)" in text
    crashed = {**row(9, 4.0, 0.9, (0.0, 0.0, 0.0), 1.0), "status": "crashed", "error": "boom"}
    doc = decide(cfg(utility_floor=0.5), [crashed])
    assert (
        doc["recommendation"]["setting"] is None and "eps=4: crashed (boom)" in doc["recommendation"]["text"]
    )


def test_inconclusive_gates_are_not_shown_as_failures_and_the_recommendation_says_so():
    rows = [
        row(0, None, 0.95, (0.02, 0.01, 0.048), 1.0),  # passes: CI upper 0.048 <= 0.05
        row(1, 8.0, 0.93, (0.04, 0.02, 0.07), 2.0),  # straddles
        row(2, 4.0, 0.92, (0.03, 0.01, 0.06), 2.0),  # straddles
        row(3, 2.0, 0.90, (0.10, 0.08, 0.12), 2.0),  # surely fails
    ]
    doc = decide(cfg(utility_floor=0.5), rows)
    by = {r["label"]: r for r in doc["settings"]}
    assert [by[k]["gate_status"] for k in ("non-private", "eps=8", "eps=4", "eps=2")] == [
        "pass", "inconclusive", "inconclusive", "fail",
    ]  # fmt: skip
    text = doc["recommendation"]["text"]
    assert text.startswith("Recommended: non-private")
    assert "it passes with membership.lira.tpr_at_fpr_0.01 95% CI upper end 0.048 <= 0.05." in text
    assert (
        "eps=8, eps=4 are inconclusive at this sample size (a 95% CI straddles a gate's threshold): "
        "neither shown to pass nor to fail; more data would settle them (eps=8: about " in text
    )
    assert "eps=4, eps=2" not in text  # a real failure is not listed among the inconclusive
    _, body = tradeoff_rows(doc)
    verdicts = {b[0]: b[-1] for b in body}
    assert verdicts == {
        "non-private": "RECOMMENDED",
        "eps=8": "inconclusive (CI straddles the threshold)",
        "eps=4": "inconclusive (CI straddles the threshold)",
        "eps=2": "fails a gate",
    }
    # no setting decided: the sentence still says the inconclusive ones could be settled
    doc = decide(cfg(utility_floor=0.5), rows[1:3])
    assert doc["recommendation"]["setting"] is None
    assert "eps=8, eps=4 are inconclusive at this sample size" in doc["recommendation"]["text"]


def test_audit_epsilon_is_shown_as_a_lower_bound():
    r = row(0, 4.0, 0.9, (0.01, 0.0, 0.02), 1.0)
    r["attacks"].append(
        {"attack": "dp.one_run", "status": "ok", "info": {},
         "metrics": {"epsilon_clopper_pearson": {"value": 0.758, "low": 0.758, "high": 4.19},
                     "epsilon_one_run": {"value": 0.5, "low": 0.3, "high": 0.7}}}
    )  # fmt: skip
    head, body = tradeoff_rows(decide(cfg(utility_floor=0.5), [r]))
    cells = dict(zip(head, body[0], strict=True))
    assert cells["dp.one_run.epsilon_clopper_pearson (lower bound)"] == ">= 0.758"
    assert cells["dp.one_run.epsilon_one_run (lower bound)"] == ">= 0.5 [0.3, 0.7]"


def test_config_problems_are_reported_with_their_place(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(
        "sweep:\n  epsilon: [inf, loose]\ndefence: {max_grad_norm: -1}\n"
        "gates: ['dp.one_run.epsilon_one_run <= 2']\nutility_floor: 2\n"
    )
    with pytest.raises(ConfigError) as e:
        load_tradeoff_config(p)
    msg = str(e.value)
    assert "sweep.epsilon (line 2): epsilon values are numbers or inf, got 'loose'" in msg
    assert "defence (line 3): max_grad_norm must be > 0, got -1" in msg
    assert "utility_floor (line 5)" in msg
    c = cfg(sweep={"epsilon": ["inf", 2], "weight_decay": [0, 0.001]})
    assert [s.label() for s in settings_of(c)] == [
        "non-private wd=0",
        "non-private wd=0.001",
        "eps=2 wd=0",
        "eps=2 wd=0.001",
    ]
    with pytest.raises(Exception, match=r"dp.one_run needs canaries.count > 0"):
        cfg(gates=["dp.one_run.epsilon_one_run <= 2"])


def test_tiny_sweep_end_to_end(tmp_path):
    conf = {
        "name": "tiny",
        "data": {"dataset": "digits"},
        "model": {"arch": "mlp", "hidden": [32]},
        "defence": {"batch_size": 128, "lr": 0.003, "epochs": 3},
        "sweep": {"epsilon": ["inf", 2]},
        "canaries": {"count": 100, "n_boot": 20},
        "attacks": [{"name": "membership.threshold"}],
        "gates": ["membership.threshold.auc <= 0.9", "dp.one_run.epsilon_one_run <= 3"],
        "utility_floor": 0.2,
        "max_workers": 2,
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(conf))
    r = CliRunner().invoke(app, ["tradeoff", str(tmp_path / "t.yaml")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out" / "tradeoff.json").read_text())
    dp = doc["settings"][1]
    assert dp["privacy"]["epsilon"] <= 2.0 and dp["dp_claim"] == "consistent"
    assert dp["cost"]["ratio_to_non_private"] > 0 and doc["recommendation"]["setting"] == "s0"
    assert {a["attack"] for a in dp["attacks"]} == {"dp.one_run", "membership.threshold"}
    html = (tmp_path / "out" / "tradeoff.html").read_text()
    assert "data:image/png;base64," in html and "RECOMMENDED" in html
    assert 'tests="7"' in (tmp_path / "out" / "junit.xml").read_text()
    assert "| non-private |" in (tmp_path / "out" / "tradeoff.md").read_text()
