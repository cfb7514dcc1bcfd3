"""`invguard audit` on language models: the text attacks against a local reference LM and against
the guard's OpenAI-compatible /v1/completions, with gates, the reports and redacted secrets."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from invguard.audit.config import parse_config
from invguard.cli import app
from invguard.core.errors import ConfigError
from invguard.report import validate
from tests.servers import serve

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]

EXTRACTION = {
    "name": "text.extraction",
    "params": {
        "samples": 96,  # a 50x canary is recovered at every seed tried (0-3), locally and remotely
        "max_tokens": 12,
        "top": 10,
        "prompts": ["format"],
        "rankings": ["perplexity", "frequency"],
    },
}


def lm_config(folder: Path, **changes) -> Path:
    cfg = {
        "name": "micro-lm",
        "seed": 0,
        "target": {"kind": "hf_lm", "model": "reference/pydoc-gpt2-micro"},
        "attacks": [
            {"name": "text.exposure", "params": {"max_exact": 0, "samples": 60}},
            EXTRACTION,
            {"name": "text.membership", "params": {"n_boot": 100}, "exposure": "top_logprobs=5 round=2"},
        ],
        "gates": [
            "text.exposure.exposure_50 <= 10 high",
            {"metric": "text.membership.auc", "op": ">=", "threshold": 0.6, "severity": "low"},
        ],
        "max_workers": 2,
        "cache_dir": os.environ["INVGUARD_CACHE"],  # the suite's cache: the micro LM is trained once
        "history": None,
        "output": {"dir": str(folder / "out")},
    }
    cfg.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _written(out: Path) -> str:
    return "".join((out / n).read_text() for n in ("results.json", "report.html", "junit.xml", "summary.md"))


def test_lm_audit_runs_the_text_attacks_gates_them_and_redacts_extracted_secrets(tmp_path, micro_lm):
    _, splits = micro_lm
    r = runner.invoke(app, ["audit", str(lm_config(tmp_path))])
    assert r.exit_code == 1, r.output  # the 50x canaries are memorised: the exposure gate fails
    assert "Traceback" not in r.output
    out = tmp_path / "out"
    doc = json.loads((out / "results.json").read_text())
    assert validate(doc) == []
    assert doc["target"]["kind"] == "hf_lm" and doc["target"]["access"].startswith("WHITEBOX")
    assert doc["data"]["dataset"] == "pydoc" and doc["data"]["splits"]["members"]["size"] == 40
    by = {a["attack"]: a for a in doc["attacks"]}
    assert all(a["status"] == "ok" for a in doc["attacks"]), [a.get("error") for a in doc["attacks"]]
    # exposure: the canaries inserted 50 times stand out of the never-inserted controls
    m = by["text.exposure"]["metrics"]
    assert m["exposure_50"]["low"] > 10 > m["exposure_0"]["high"]
    gates = {g["gate"].split()[0]: g for g in doc["gates"]}
    assert gates["text.exposure.exposure_50"]["status"] == "fail"
    # membership through a top-5 rounded policy, with the classifier family's metrics
    mem = by["text.membership"]
    assert mem["exposure"] == "top_logprobs k=5 round=2" and mem["metrics"]["auc"]["value"] > 0.75
    assert gates["text.membership.auc"]["status"] == "pass"
    # extraction found a 50x canary; no secret is written anywhere, each string redacted
    ext = by["text.extraction"]
    assert ext["metrics"]["canaries_recovered"]["value"] > 0
    rows = ext["tables"]["extracted"]
    assert rows and all("redacted, sha256" in row["text"] for row in rows)
    written = _written(out) + r.output
    assert all(c.secret not in written for c in splits.canaries)


def test_show_secrets_reveals_them_through_the_guards_completions_route(tmp_path, micro_lm, monkeypatch):
    """kind: openai against the guard's own /v1/completions (full log-probabilities for this key),
    with `--show-secrets`: the extracted canaries are in the report in clear."""
    from invguard.guard import from_dict
    from invguard.guard.app import Guard
    from invguard.guard.auth import hash_key
    from invguard.models.lm_server import openai_app
    from invguard.targets.hf_lm import HFLMTarget

    path, splits = micro_lm
    key = "k-audit-0123456789abcdef"
    monkeypatch.setenv("LM_AUDIT_KEY", key)
    rate = {"burst": 100000, "per_second": 100000}
    with ExitStack() as stack:
        upstream = stack.enter_context(serve(openai_app(HFLMTarget(path), model_name="micro")))
        guard = Guard(
            from_dict(
                {
                    "model": {
                        "name": "micro",
                        "kind": "openai",
                        "upstream": {"url": upstream},
                        "upstream_model": "micro",
                    },
                    "roles": {"auditor": {"policy": "logprobs", "rate": rate}},
                    "auth": {"keys": [{"id": "auditor", "sha256": hash_key(key), "role": "auditor"}]},
                    "audit": {"path": str(tmp_path / "guard-audit.jsonl"), "fsync": False},
                }
            )
        )
        url = stack.enter_context(serve(guard.app))
        cfg = lm_config(
            tmp_path,
            target={
                "kind": "openai",
                "url": url + "/v1",
                "model_name": "micro",
                "api_key_env": "LM_AUDIT_KEY",
                "access": "logprobs",
                "budget": 500,
            },
            data={"text": {"max_documents": 80, "insertions": [0, 1, 10, 50], "canaries_per_count": 2}},
            attacks=[EXTRACTION],
            gates=[],
            max_workers=1,
        )
        r = runner.invoke(app, ["audit", str(cfg), "--show-secrets"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    doc = json.loads((out / "results.json").read_text())
    assert validate(doc) == []
    assert doc["target"]["kind"] == "openai" and "OpenAI-compatible completions" in doc["target"]["access"]
    (ext,) = doc["attacks"]
    assert ext["status"] == "ok" and ext["params"]["show_secrets"] is True
    found = {row["canary"] for row in ext["tables"]["extracted"] if row["canary"]}
    fifty = [c for c in splits.canaries if c.insertions == 50 and c.name in found]
    assert fifty, ext["tables"]["extracted"]
    html = (out / "report.html").read_text()
    assert all(c.secret in doc_text for c in fifty for doc_text in (json.dumps(doc), html))
    assert key not in _written(out) + r.output  # the API key never reaches a report


def test_lm_audit_config_errors_name_the_field(tmp_path):
    def problems(**changes) -> str:
        raw = yaml.safe_load(lm_config(tmp_path, **changes).read_text())
        with pytest.raises(ConfigError) as e:
            parse_config(raw)
        return str(e.value)

    assert "show_secrets cannot be set in a config file" in problems(
        attacks=[{"name": "text.extraction", "params": {"show_secrets": True}}], gates=[]
    )
    assert "the text.* attacks need a language-model target" in problems(
        target={"model": "reference/digits-mlp"}, gates=[]
    )
    assert "is attacked by the text.* attacks only" in problems(attacks=["membership.threshold"], gates=[])
    assert "access 'scores' is a classifier's" in problems(
        target={"kind": "hf_lm", "model": "reference/pydoc-gpt2-micro", "access": "scores"}
    )
    assert "an OpenAI-compatible endpoint grants at most logprobs" in problems(
        target={"kind": "openai", "url": "http://127.0.0.1:1", "model_name": "m", "access": "whitebox"}
    )
    assert "a openai target needs url and model_name" in problems(target={"kind": "openai"})
    assert "unknown reference LM 'reference/nope'" in problems(
        target={"kind": "hf_lm", "model": "reference/nope"}
    )
    assert "unknown text policy 'label_only'" in problems(
        attacks=[{"name": "text.membership", "exposure": "label_only"}], gates=[]
    )
    assert "target.path: file not found" in problems(
        target={"kind": "hf_lm", "path": str(tmp_path / "no-such-dir")}
    )


def test_lm_audit_refuses_a_reference_lm_with_other_text_data(tmp_path):
    r = runner.invoke(
        app,
        ["audit", str(lm_config(tmp_path, data={"text": {"max_documents": 50}}, gates=[]))],
    )
    assert r.exit_code == 2, r.output
    assert "data.text: reference/pydoc-gpt2-micro is trained on its own corpus and canaries" in r.output
    assert "max_documents" in r.output


def test_the_example_lm_config_is_valid():
    cfg = parse_config(
        yaml.safe_load((ROOT / "examples" / "audit-lm.yaml").read_text()), base=ROOT / "examples"
    )
    assert cfg.target.kind == "hf_lm" and {a.name for a in cfg.attacks} >= {
        "text.exposure",
        "text.extraction",
    }
