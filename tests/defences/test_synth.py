"""`invguard synth check`: a generator that returns lightly noised copies of its training records is
flagged; an independent generator (a Gaussian mixture fitted on disjoint records) is not; both with
CIs, through the CLI and its reports."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from invguard.cli import app
from invguard.defences.synth import mixture_generator

COLS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
        "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
        "income"]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    spec = importlib.util.find_spec("mglearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "adult.data"
    df = pd.read_csv(path, header=None, names=COLS, skipinitialspace=True)
    df = df[["age", "workclass", "education", "hours-per-week", "occupation", "sex", "income"]]
    rng = np.random.default_rng(0)
    ix = rng.permutation(len(df))
    n = 1000
    train, hold, other = (df.iloc[ix[k * n : (k + 1) * n]].reset_index(drop=True) for k in range(3))
    noisy = train.copy()
    for c in ("age", "hours-per-week"):
        noisy[c] = noisy[c] + rng.normal(0, 0.5, n)  # light noise on the numbers, categories kept
    root = tmp_path_factory.mktemp("synth")
    for name, frame in (("train", train), ("holdout", hold), ("noisy", noisy)):
        frame.to_csv(root / f"{name}.csv", index=False)
    mixture_generator(other, n, components=5, seed=0).to_csv(root / "mixture.csv", index=False)
    return root


def run(root, synthetic):
    out = root / f"out-{synthetic}"
    r = CliRunner().invoke(
        app,
        ["synth", "check", "--real", str(root / "train.csv"), "--synthetic", str(root / f"{synthetic}.csv"),
         "--holdout", str(root / "holdout.csv"), "--n-attacks", "100", "--out", str(out)],
    )  # fmt: skip
    return r, json.loads((out / "synth.json").read_text()), out


def test_noisy_copies_are_flagged(files):
    r, doc, out = run(files, "noisy")
    assert r.exit_code == 1, r.output
    m = doc["metrics"]
    assert m["dcr_share"]["low"] > 0.9  # nearly every synthetic record sits on a training record
    assert m["nndr_synthetic_median"]["high"] < 0.2 < m["nndr_holdout_median"]["low"]
    assert m["mia_auc"]["low"] > 0.9 and m["mia_epsilon_roc"]["low"] > 1
    assert m["inference_risk"]["low"] > 0.5 and m["linkability_risk"]["low"] > 0
    titles = [f["title"] for f in doc["findings"] if f["severity"] in ("medium", "high")]
    assert "Synthetic records sit on the training records" in titles
    assert "Membership is exposed by the synthetic data" in titles
    progress = [ln for ln in r.output.splitlines() if ln.startswith("anonymeter ")]
    assert progress[0] == "anonymeter 1/3: singling-out, 100 attacks"
    assert progress[1].startswith("anonymeter 2/3: linkability, 100 attacks (previous took ")
    assert progress[2].startswith("anonymeter 3/3: inference of 'income', 100 attacks (previous took ")
    assert "Leak found:" in r.output
    assert "Synthetic records sit on the training records" in (out / "synth.html").read_text()
    assert 'failures="4"' in (out / "junit.xml").read_text()


def test_an_independent_generator_passes(files):
    r, doc, out = run(files, "mixture")
    assert r.exit_code == 0, r.output
    m = doc["metrics"]
    assert m["dcr_share"]["low"] <= 0.5 <= m["dcr_share"]["high"] + 0.02
    assert m["mia_auc"]["low"] <= 0.5
    for k in ("singling_out_risk", "linkability_risk", "inference_risk"):
        assert m[k]["low"] == 0.0 and m[k]["high"] < 0.5, k
    assert not doc["leak"] and "\nNo leak found by these checks" in r.output
    assert "| dcr_share |" in (out / "synth.md").read_text()


def test_bad_inputs_are_named(files, tmp_path):
    r = CliRunner().invoke(
        app, ["synth", "check", "--real", str(files / "train.csv"), "--synthetic", "nope.csv"]
    )
    assert r.exit_code == 2 and "--synthetic: nope.csv not found" in r.output
    pd.DataFrame({"age": [1, 2, 3]}).to_csv(tmp_path / "thin.csv", index=False)
    r = CliRunner().invoke(
        app, ["synth", "check", "--real", str(files / "train.csv"), "--synthetic", str(tmp_path / "thin.csv")]
    )
    assert r.exit_code == 2 and "lacks the columns ['workclass'" in r.output


def test_default_attack_count_follows_the_data_size():
    from invguard.defences.synth import default_n_attacks

    assert [default_n_attacks(n) for n in (10, 300, 1000, 1500, 100_000)] == [20, 100, 333, 500, 500]


def test_a_collapsed_generator_does_not_hang_the_singling_out_attack(files, tmp_path):
    # three distinct records repeated: fewer singling-out predicates exist than attacks are asked for,
    # and anonymeter's default of 10 million draws ran for many minutes
    train = pd.read_csv(files / "train.csv")
    train.iloc[np.arange(300) % 3].to_csv(tmp_path / "collapsed.csv", index=False)
    r = CliRunner().invoke(
        app,
        ["synth", "check", "--real", str(files / "train.csv"), "--synthetic", str(tmp_path / "collapsed.csv"),
         "--holdout", str(files / "holdout.csv"), "--n-attacks", "20", "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    doc = json.loads((tmp_path / "out" / "synth.json").read_text())
    assert "singling_out_risk" in doc["metrics"]
    assert "anonymeter: each attack targets up to 20 records." in doc["notes"]


def test_a_missing_synth_dependency_names_the_install_command(files, monkeypatch):
    args = ["synth", "check", "--real", str(files / "train.csv"), "--synthetic", str(files / "noisy.csv")]
    install = "pip install 'invguard[synth]' && pip install --no-deps 'anonymeter==1.1.0'"
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "needs the pandas package, which is not installed" in r.output and install in r.output
    monkeypatch.delitem(sys.modules, "pandas")
    monkeypatch.setitem(sys.modules, "anonymeter.evaluators", None)
    r = CliRunner().invoke(app, [*args, "--n-attacks", "5"])
    assert r.exit_code == 2, r.output
    assert "needs the anonymeter package" in r.output and install in r.output


def test_an_interrupt_names_the_synthetic_data_check(files, monkeypatch):
    import invguard.defences.synth as synth

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "synth_check", stop)
    r = CliRunner().invoke(
        app, ["synth", "check", "--real", str(files / "train.csv"), "--synthetic", str(files / "noisy.csv")]
    )
    assert r.exit_code == 130
    assert "interrupted: the synthetic-data check was stopped; no report was written" in r.output
