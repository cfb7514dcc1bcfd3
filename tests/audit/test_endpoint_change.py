"""An audit of a remote endpoint checks that the endpoint answered the same way for the whole run:
the first probe's row is sent again after the last job and the two answers' form compared. An
endpoint that turns its scores one-hot mid-audit (what a guard's detection does when it tightens a
key to label_only in the same response shape) makes the verdict inconclusive, never a pass, in
every report; an unchanged endpoint (also one whose scores are noisy) is unaffected."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from invguard.audit.gates import verdict
from invguard.audit.runner import allocate_budget, answer_form
from invguard.cli import app
from invguard.core.target import Access, Prediction
from invguard.report import validate
from tests.audit.conftest import write_config
from tests.servers import serve

runner = CliRunner()
CHANGED = "the endpoint's answers changed during the audit"


class FakeEndpoint:
    """A fixed linear softmax classifier of 8x8 inputs behind ``POST /predict`` (the invguard
    preset's shape), answering one-hot scores from row ``switch_after`` on (None: never), and
    refusing with a spent budget's 429 from row ``refuse_after`` on."""

    def __init__(self, switch_after: int | None, refuse_after: int | None = None) -> None:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        self.w = np.random.default_rng(0).normal(size=(64, 10))
        self.switch_after = switch_after
        self.refuse_after = refuse_after
        self.rows = 0
        self._lock = threading.Lock()

        async def predict(request):  # type: ignore[no-untyped-def]
            x = np.asarray((await request.json())["inputs"], dtype=np.float64).reshape(-1, 64)
            if self.refuse_after is not None and self.rows + len(x) > self.refuse_after:
                return JSONResponse({"error": {"code": "budget_exhausted"}}, status_code=429)
            z = x @ self.w / 8
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            with self._lock:
                start, self.rows = self.rows, self.rows + len(x)
            switch = len(x) + start if self.switch_after is None else self.switch_after
            tight = np.arange(start, start + len(x)) >= switch
            p[tight] = np.eye(10)[p[tight].argmax(axis=1)]
            return JSONResponse({"labels": p.argmax(axis=1).tolist(), "scores": p.round(4).tolist()})

        self.app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def _audit(tmp_path, switch_after, refuse_after=None):
    fake = FakeEndpoint(switch_after, refuse_after)
    with serve(fake.app) as url:
        path = write_config(
            tmp_path,
            target={
                "name": "fake-endpoint",
                "url": f"{url}/predict",
                "preset": "invguard",
                "returns": "scores",
                "budget": 200,
                "input_shape": [1, 8, 8],
                "num_classes": 10,
            },
            attacks=[{"name": "test.confidence", "params": {"records": 60}}],
            exposures=None,
            gates=["test.confidence.auc <= 1.0"],
            max_workers=1,
            history=None,
        )
        r = runner.invoke(app, ["audit", str(path)])
    out = tmp_path / "out"
    return r, json.loads((out / "results.json").read_text()), out, fake.rows


def test_an_endpoint_that_tightens_its_answers_mid_audit_makes_the_verdict_inconclusive(tmp_path):
    r, doc, out, served = _audit(tmp_path, switch_after=61)  # the probe and half of the 120 rows
    v = doc["verdict"]
    assert v["status"] == "inconclusive" and v["passed"] is False
    assert v["gates_passed"] == v["gates_total"] == 1  # the gate alone would have passed
    assert v["headline"].startswith(f"INCONCLUSIVE: {CHANGED} (e.g. the guard's detection tightened")
    changed = doc["audit"]["endpoint_changed"]
    assert changed == v["endpoint_changed"]
    assert [a["scores"] and not a["one_hot"] for a in changed["before"]] == [True]
    assert [(a["nonzero"], a["one_hot"]) for a in changed["after"]] == [(1, True)]
    assert changed["before"][0]["label"] == changed["after"][0]["label"]
    assert validate(doc) == []
    assert r.exit_code == 1, r.output
    assert CHANGED in r.output
    # both probes are counted and were reserved out of the budget up front
    assert doc["provenance"]["budget"]["probe"] == 2
    assert doc["provenance"]["budget"]["shares"] == {"a0": 198}
    assert doc["provenance"]["queries_total"] == served == 2 + 120
    assert CHANGED in (out / "summary.md").read_text()
    assert 'id="endpoint-changed"' in (out / "report.html").read_text()
    junit = (out / "junit.xml").read_text()
    assert 'type="EndpointChanged"' in junit and 'failures="1"' in junit


def test_an_unchanged_endpoint_passes_as_before(tmp_path):
    r, doc, out, served = _audit(tmp_path, switch_after=None)
    assert doc["verdict"]["status"] == "pass", doc["verdict"]["headline"]
    assert doc["verdict"]["headline"].startswith("PASS: 1 of 1 gate pass")
    assert doc["audit"]["endpoint_changed"] is None
    assert r.exit_code == 0, r.output
    assert doc["provenance"]["queries_total"] == served == 122
    junit = (out / "junit.xml").read_text()
    assert "EndpointChanged" not in junit and 'failures="0"' in junit


def test_an_endpoint_that_refuses_the_closing_probe_is_unverified_and_not_counted(tmp_path):
    r, doc, _, served = _audit(tmp_path, switch_after=None, refuse_after=121)
    assert doc["attacks"][0]["status"] == "ok"
    changed = doc["audit"]["endpoint_changed"]
    assert changed["after"] is None
    assert validate(doc) == []
    assert changed["message"].startswith("the endpoint did not answer the closing probe (BudgetExhausted: ")
    assert doc["verdict"]["status"] == "inconclusive"
    headline = doc["verdict"]["headline"]
    assert headline.startswith("INCONCLUSIVE: the endpoint did not answer the closing probe")
    assert r.exit_code == 1, r.output
    assert doc["provenance"]["queries_total"] == served == 121  # the refused row was not answered


def test_the_form_of_an_answer_ignores_noise_and_sees_one_hot_scores():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(10), size=3)
    noisy = np.clip(p + rng.normal(0, 0.01, p.shape), 1e-6, None)
    labels = p.argmax(axis=1)
    form = answer_form(Prediction(labels=labels, scores=p, access=Access.SCORES))
    assert form == answer_form(Prediction(labels=labels, scores=noisy, access=Access.SCORES))
    assert [f["nonzero"] for f in form] == [10, 10, 10]
    hot = answer_form(Prediction(labels=labels, scores=np.eye(10)[labels], access=Access.SCORES))
    assert [(f["nonzero"], f["one_hot"]) for f in hot] == [(1, True)] * 3
    assert answer_form(Prediction(labels=labels)) == [{"label": int(y), "scores": False} for y in labels]


@pytest.mark.parametrize(
    ("gate_status", "expected"),
    [("pass", "inconclusive"), ("inconclusive", "inconclusive"), ("fail", "fail")],
)
def test_a_changed_endpoint_is_never_a_pass_and_never_hides_a_failure(gate_status, expected):
    gate = {"gate": "g", "attack": "a", "status": gate_status, "blocking": True}
    changed = {"before": [], "after": None, "message": "the endpoint did not answer the closing probe"}
    v = verdict([gate], endpoint_changed=changed)
    assert (v["status"], v["passed"]) == (expected, False)
    assert v["headline"].startswith(f"{expected.upper()}: the endpoint did not answer the closing probe; ")
    assert verdict([gate])["status"] == gate_status


def test_the_closing_probe_is_reserved_out_of_the_budget():
    assert allocate_budget(100, [None, None], probes=2) == [49, 49]
    assert allocate_budget(100, [None, None]) == [50, 49]
