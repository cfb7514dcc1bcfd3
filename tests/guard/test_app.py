"""The guard end to end on a real uvicorn server: roles and policies on every route, every error
path (audited, never a score), limits, metrics, key revocation, proxy mode, failing closed."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from invguard.core.access import Access
from invguard.core.errors import TargetError
from invguard.guard.auth import KeyStore
from invguard.targets import HttpTarget
from tests.guard.bare import kserve_app
from tests.guard.conftest import KEYS, audit_keys, base_config, input_hmac
from tests.servers import serve


def call(url, path, body=None, key=None, method="POST", headers=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    h = dict(headers or {})
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    if key:
        h["X-API-Key"] = key
    req = urllib.request.Request(url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def records(guard):
    return [json.loads(x) for x in guard.audit.path.read_text().splitlines() if '"kind":"record"' in x]


def v2_body(x):
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
        ]
    }


@pytest.fixture()
def x(digits):
    return digits.evaluation.X[:4].astype(np.float32)


def test_each_role_gets_exactly_what_its_policy_allows_on_every_route(make_guard, torch_model, x):
    url, _ = make_guard()
    truth = torch_model.target.predict(x)
    for route in ("v1", "v2"):
        got = {}
        for role, key in KEYS.items():
            if route == "v1":
                status, _, raw = call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, key)
                doc = json.loads(raw)
            else:
                status, _, raw = call(url, "/v2/models/digits/infer", v2_body(x), key)
                outs = {
                    o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in json.loads(raw)["outputs"]
                }
                doc = {k: v.tolist() for k, v in outs.items()}
            assert status == 200, raw
            got[role] = doc
            assert doc["labels"] == truth.labels.tolist()
        assert set(got["default"]) <= {"labels", "policy", "access"}
        assert "logits" not in got["partner"]
        scores = np.asarray(got["partner"]["scores"])
        assert ((scores > 0).sum(axis=1) <= 3).all()
        assert np.allclose(scores, np.round(scores, 2))
        np.testing.assert_allclose(got["internal"]["logits"], truth.logits, rtol=1e-6)
        np.testing.assert_allclose(got["internal"]["scores"], truth.scores, rtol=1e-6)


def test_http_target_speaks_to_the_guard(make_guard, x):
    url, _ = make_guard()
    t = HttpTarget(
        f"{url}/v1/models/digits/predict",
        preset="invguard",
        returns="scores",
        input_shape=(1, 8, 8),
        num_classes=10,
        api_key=KEYS["partner"],
    )
    pred = t.predict(x)
    assert pred.access == Access.SCORES and ((pred.scores > 0).sum(axis=1) <= 3).all()
    # the partner role cannot be talked into logits
    t_logits = HttpTarget(
        f"{url}/v1/models/digits/predict",
        preset="invguard",
        returns="logits",
        input_shape=(1, 8, 8),
        num_classes=10,
        api_key=KEYS["partner"],
    )
    with pytest.raises(TargetError, match="missing or bad field 'logits'"):
        t_logits.predict(x)
    v2 = HttpTarget(
        f"{url}/v2/models/digits/infer",
        preset="kserve-v2",
        returns="logits",
        output_name="logits",
        input_shape=(1, 8, 8),
        num_classes=10,
        api_key=KEYS["internal"],
    )
    assert v2.predict(x).logits.shape == (4, 10)


BAD = [
    # (name, path, body, headers, status, code, message fragment)
    (
        "no key",
        "/v1/models/digits/predict",
        "ok",
        {"X-API-Key": None},
        401,
        "unauthorized",
        "missing API key",
    ),
    (
        "bad key",
        "/v1/models/digits/predict",
        "ok",
        {"X-API-Key": "nope"},
        401,
        "unauthorized",
        "invalid or revoked",
    ),
    (
        "bad json",
        "/v1/models/digits/predict",
        b'{"inputs": [',
        {},
        400,
        "bad_json",
        "request body is not valid JSON",
    ),
    (
        "nested too deeply",
        "/v1/models/digits/predict",
        b'{"inputs": ' + b"[" * 9000 + b"]" * 9000 + b"}",
        {},
        400,
        "bad_json",
        "request body is nested too deeply",
    ),
    ("not an object", "/v1/models/digits/predict", [1, 2], {}, 400, "bad_input", "must be a JSON object"),
    (
        "extra field",
        "/v1/models/digits/predict",
        {"inputs": "x", "scores": True},
        {},
        400,
        "bad_input",
        "unknown field(s) ['scores']",
    ),
    ("missing inputs", "/v1/models/digits/predict", {}, {}, 400, "bad_input", 'missing field "inputs"'),
    ("empty batch", "/v1/models/digits/predict", {"inputs": []}, {}, 400, "bad_input", "non-empty list"),
    (
        "wrong shape",
        "/v1/models/digits/predict",
        {"inputs": [[1, 2, 3]]},
        {},
        400,
        "bad_shape",
        "inputs: expected a batch of shape (n, 1, 8, 8), got (1, 3)",
    ),
    (
        "ragged",
        "/v1/models/digits/predict",
        {"inputs": [[1, 2], [3]]},
        {},
        400,
        "bad_shape",
        "ragged or mixed",
    ),
    (
        "strings",
        "/v1/models/digits/predict",
        {"inputs": [[["a"] * 8] * 8]},
        {},
        400,
        "bad_input",
        "every value must be a number",
    ),
    (
        "booleans",
        "/v1/models/digits/predict",
        {"inputs": [[[[True] + [0] * 7] * 8]]},
        {},
        400,
        "bad_input",
        "found true/false/null",
    ),
    (
        "null",
        "/v1/models/digits/predict",
        {"inputs": [[[[None] * 8] * 8]]},
        {},
        400,
        "bad_input",
        "every value must be a number",
    ),
    (
        "nan",
        "/v1/models/digits/predict",
        b'{"inputs": [[[' + b",".join([b"[NaN,0,0,0,0,0,0,0]"] * 8) + b"]]]}",
        {},
        400,
        "bad_value",
        "finite numbers in [0, 1]",
    ),
    (
        "out of range",
        "/v1/models/digits/predict",
        {"inputs": [[[[5.0] * 8] * 8]]},
        {},
        400,
        "bad_value",
        "finite numbers in [0, 1]",
    ),
    (
        "batch too large",
        "/v1/models/digits/predict",
        {"inputs": [[[[0.0] * 8] * 8]] * 17},
        {},
        400,
        "batch_too_large",
        "17 samples exceed the limit of 16",
    ),
    (
        "oversized",
        "/v1/models/digits/predict",
        b"[" * 30000,
        {},
        413,
        "payload_too_large",
        "exceeds the limit of 20000 bytes",
    ),
    (
        "unknown model",
        "/v1/models/faces/predict",
        "ok",
        {},
        404,
        "unknown_model",
        "unknown model 'faces'; this guard serves 'digits'",
    ),
    ("unknown route", "/v1/admin", "ok", {}, 404, "not_found", "no route '/v1/admin'"),
    (
        "v2 dtype",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "i", "shape": [1, 1, 8, 8], "datatype": "BYTES", "data": [0] * 64}]},
        {},
        400,
        "bad_dtype",
        "expected FP32 or FP64",
    ),
    (
        "v2 count",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "i", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": [0] * 64}]},
        {},
        400,
        "bad_shape",
        "64 values do not fill shape [2, 1, 8, 8]",
    ),
    (
        "v2 nesting",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "i", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [[[0] * 8] * 8]}]},
        {},
        400,
        "bad_shape",
        "(nested as [1, 8, 8], not as the shape [1, 1, 8, 8])",
    ),
    (
        "v2 shape",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "i", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
        {},
        400,
        "bad_shape",
        "expected [n, 1, 8, 8], got [1, 64]",
    ),
]


def test_every_error_path_is_a_clear_4xx_without_scores_and_is_audited(make_guard, x):
    url, guard = make_guard()
    ok = {"inputs": x[:1].tolist()}
    expected = []
    for name, path, body, headers, status, code, fragment in BAD:
        h = {"X-API-Key": KEYS["internal"], **headers}
        h = {k: v for k, v in h.items() if v is not None}
        got_status, _, raw = call(url, path, ok if body == "ok" else body, headers=h)
        assert got_status == status, (name, raw)
        doc = json.loads(raw)
        assert set(doc) == {"code", "error"}, (name, doc)
        assert doc["code"] == code and fragment in doc["error"], (name, doc)
        assert b"scores" not in raw.replace(b"['scores']", b"") and b"logits" not in raw, name
        expected.append((status, "unauthorized" if status == 401 else "rejected"))
    # wrong method: 405, also audited
    s, _, raw = call(url, "/v1/models/digits/predict", method="GET", headers={"X-API-Key": KEYS["internal"]})
    assert s == 405 and json.loads(raw)["code"] == "method_not_allowed"
    expected.append((405, "rejected"))
    # Authorization: Bearer works like X-API-Key
    s, _, raw = call(
        url, "/v1/models/digits/predict", ok, headers={"Authorization": f"Bearer {KEYS['default']}"}
    )
    assert s == 200 and set(json.loads(raw)) == {"labels", "policy", "access"}
    expected.append((200, "served"))
    recs = records(guard)
    assert [(r["status"], r["decision"]) for r in recs] == expected
    assert [r["seq"] for r in recs] == list(range(1, len(expected) + 1))
    assert all(r["entropy"] is None and r["labels"] is None for r in recs[:-1])
    assert recs[0]["client"] is None and recs[2]["client"] == "internal-client"
    assert recs[2]["input_hmac"] is not None and "input" not in recs[2]


def test_rate_limit_and_budget_answer_429_with_ietf_headers(make_guard, tmp_path, x):
    cfg = base_config(tmp_path)
    cfg["roles"]["partner"] = {"policy": "top_k=3", "rate": {"burst": 2, "per_second": 0.01}}
    cfg["roles"]["default"] = {
        "policy": "label_only",
        "rate": {"burst": 100, "per_second": 100},
        "budget": {"day": 5},
    }
    url, guard = make_guard(cfg)
    body = {"inputs": x[:2].tolist()}
    got = [call(url, "/v1/models/digits/predict", body, KEYS["partner"]) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    _, h, raw = got[2]
    assert json.loads(raw) == {"code": "rate_limited", "error": "rate limit exceeded"}
    assert int(h["retry-after"]) >= 99 and h["ratelimit-policy"] == '"burst";q=2;w=200'
    assert h["ratelimit"].startswith('"burst";r=0;t=')
    got = [call(url, "/v1/models/digits/predict", body, KEYS["default"]) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    assert json.loads(got[2][2])["code"] == "budget_exhausted"
    assert '"day";r=1;' in got[2][1]["ratelimit"]
    # a budget-refused client can still ask for fewer rows
    assert call(url, "/v1/models/digits/predict", {"inputs": x[:1].tolist()}, KEYS["default"])[0] == 200
    decisions = [r["decision"] for r in records(guard)]
    assert decisions == ["served", "served", "rate_limited", "served", "served", "budget_exhausted", "served"]
    m = urllib.request.urlopen(url + "/metrics").read().decode()
    assert 'invguard_guard_limit_violations_total{kind="rate_limited",role="partner"} 1.0' in m
    assert 'invguard_guard_limit_violations_total{kind="budget_exhausted",role="default"} 1.0' in m


def test_metrics_export_the_privacy_slis_without_client_ids(make_guard, x):
    url, guard = make_guard()
    for key in KEYS.values():
        call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, key)
    call(url, "/v2/models/digits/infer", v2_body(x), KEYS["partner"])
    call(url, "/v1/models/digits/predict", b"{", KEYS["partner"])
    call(url, "/v1/models/digits/predict", {"inputs": x.tolist()})
    m = urllib.request.urlopen(url + "/metrics").read().decode()
    line = lambda name: next(ln for ln in m.splitlines() if ln.startswith(name))  # noqa: E731
    assert (
        'invguard_guard_requests_total{role="partner",route="/v1/models/{name}/predict",status="200"} 1.0'
        in m
    )
    assert (
        'invguard_guard_requests_total{role="anonymous",route="/v1/models/{name}/predict",status="401"} 1.0'
        in m
    )
    assert (
        'invguard_guard_sensitive_fields_total{field="logits",role="internal",'
        'route="/v1/models/{name}/predict"} 1.0' in m
    )
    assert (
        'invguard_guard_sensitive_fields_total{field="scores",role="partner",'
        'route="/v2/models/{name}/infer"} 1.0' in m
    )
    assert 'field="scores",role="default"' not in m
    assert float(line('invguard_guard_response_entropy_nats_count{role="internal"}').split()[-1]) == 4
    ent = np.asarray(records(guard)[0]["entropy"])
    n_conf = int((ent < 0.1).sum())
    if n_conf:
        assert f'invguard_guard_high_confidence_responses_total{{role="internal"}} {float(n_conf)}' in m
    assert line("invguard_guard_audit_records_written_total").split()[-1] == "6.0"
    assert line("invguard_guard_audit_write_failures_total").split()[-1] == "0.0"
    assert "client" not in m and "internal-client" not in m
    assert urllib.request.urlopen(url + "/readyz").status == 200
    spec = json.loads(urllib.request.urlopen(url + "/openapi.json").read())
    assert set(spec["paths"]) >= {"/v1/models/{name}/predict", "/v2/models/{name}/infer"}


def test_keys_from_the_sqlite_store_and_revocation_on_a_running_guard(make_guard, tmp_path, x):
    store = KeyStore(tmp_path / "keys.db")
    key, _ = store.add("partner", "acme")
    cfg = base_config(tmp_path, auth={"key_store": str(store.path)})
    url, guard = make_guard(cfg)
    body = {"inputs": x[:1].tolist()}
    s, _, raw = call(url, "/v1/models/digits/predict", body, key)
    assert s == 200 and "scores" in json.loads(raw)
    assert key.encode() not in store.path.read_bytes()
    store.revoke("acme")
    guard.auth.clock = lambda: 1e9  # a second later (the guard re-reads the store at most once a second)
    s, _, raw = call(url, "/v1/models/digits/predict", body, key)
    assert s == 401 and json.loads(raw)["error"] == "invalid or revoked API key"


def test_proxy_mode_forwards_through_the_pool_and_never_leaks_upstream_errors(
    make_guard, torch_model, tmp_path, x
):
    from invguard.guard import from_dict
    from invguard.guard.upstream import build_model

    with serve(kserve_app(torch_model.target)) as up:
        cfg = base_config(tmp_path)
        cfg["model"] = {
            "name": "digits",
            "kind": "proxy",
            "input_shape": [1, 8, 8],
            "num_classes": 10,
            "input_range": [0, 1],
            "upstream": {"url": f"{up}/v2/models/digits/infer", "preset": "kserve-v2", "returns": "logits"},
        }
        url, guard = make_guard(cfg, model=build_model(from_dict(cfg).model))
        local = torch_model.target.predict(x)
        for role, key in KEYS.items():
            s, _, raw = call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, key)
            assert s == 200 and json.loads(raw)["labels"] == local.labels.tolist(), role
        s, _, raw = call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, KEYS["internal"])
        np.testing.assert_allclose(json.loads(raw)["logits"], local.logits, rtol=1e-5)
    # the upstream is gone now
    s, _, raw = call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, KEYS["internal"])
    doc = json.loads(raw)
    assert s == 502 and doc["code"] == "upstream_error" and set(doc) == {"code", "error"}
    assert records(guard)[-1]["decision"] == "upstream_error"
    m = urllib.request.urlopen(url + "/metrics").read().decode()
    assert 'invguard_guard_upstream_errors_total{kind="unreachable"} 1.0' in m


def test_no_prediction_without_an_audit_record_and_recovery_once_the_disk_is_back(make_guard, x):
    url, guard = make_guard()
    body = {"inputs": x.tolist()}
    assert call(url, "/v1/models/digits/predict", body, KEYS["internal"])[0] == 200
    good_size = guard.audit.path.stat().st_size
    real_write = guard.audit._write_sync
    state = {"full": True}

    def disk_full(blob, head):
        if state["full"]:
            guard.audit._file.write(blob[: len(blob) // 2])  # a partial write, then ENOSPC
            guard.audit._file.flush()
            raise OSError(28, "No space left on device")
        real_write(blob, head)

    guard.audit._write_sync = disk_full
    for _ in range(2):
        s, _, raw = call(url, "/v1/models/digits/predict", body, KEYS["internal"])
        assert s == 503 and json.loads(raw)["code"] == "audit_unavailable" and b"logits" not in raw
    assert guard.audit.path.stat().st_size == good_size  # the partial write was cut back
    s, _, raw = call(url, "/readyz", method="GET")
    assert s == 503 and "No space left on device" in json.loads(raw)["problems"][0]
    m = urllib.request.urlopen(url + "/metrics").read().decode()
    assert "invguard_guard_audit_write_failures_total 2.0" in m
    assert "invguard_guard_audit_records_written_total 1.0" in m
    state["full"] = False  # space is freed: the guard recovers by itself (no restart)
    s, _, raw = call(url, "/v1/models/digits/predict", body, KEYS["internal"])
    assert s == 200 and "logits" in json.loads(raw)
    assert call(url, "/readyz", method="GET")[0] == 200
    assert [r["seq"] for r in records(guard)] == [1, 2]
    from invguard.guard.auditlog import verify

    rep = verify(guard.audit.path, public_key=audit_keys(guard.audit.path)[0], allow_missing_head=True)
    assert rep.ok and rep.records == 2, rep.problem


def test_torch_model_file_from_config_and_raw_inputs_in_the_log(tmp_path, digits_mlp, x):
    from invguard import models
    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    path = models.save(digits_mlp, tmp_path / "m.pt")
    cfg = base_config(tmp_path, audit={"store_inputs": True})
    cfg["model"] = {**cfg["model"], "path": str(path)}
    guard = Guard(from_dict(cfg))  # loads the file itself
    assert (guard.input_shape, guard.num_classes) == ((1, 8, 8), 10)
    with serve(guard.app) as url:
        body = json.dumps({"inputs": x[:2].tolist()}).encode()
        s, _, raw = call(url, "/v1/models/digits/predict", body, KEYS["default"])
    from invguard.targets.torch import TorchTarget

    truth = TorchTarget(digits_mlp, input_shape=(1, 8, 8)).predict(x[:2]).labels.tolist()
    assert s == 200 and json.loads(raw)["labels"] == truth
    rec = records(guard)[-1]
    _, secret = audit_keys(guard.audit.path)
    assert rec["input"] == body.decode() and rec["input_hmac"] == input_hmac(secret, body)
    # a keyed HMAC (RFC 2104), not a plain hash anyone can recompute for a guessed input
    assert rec["input_hmac"] != __import__("hashlib").sha256(body).hexdigest()


def test_an_unreachable_redis_fails_closed(make_guard, tmp_path, x):
    from tests.servers import free_port

    cfg = base_config(
        tmp_path, ratelimit={"backend": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    url, guard = make_guard(cfg)
    s, _, raw = call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, KEYS["internal"])
    doc = json.loads(raw)
    assert s == 503 and doc["code"] == "limiter_unavailable" and set(doc) == {"code", "error"}
    assert records(guard)[-1]["decision"] == "rejected"
    s, _, raw = call(url, "/readyz", method="GET")
    assert s == 503 and "rate-limit backend unreachable" in json.loads(raw)["problems"]


def test_noise_is_never_replayable_through_the_guard(make_guard, tmp_path, x):
    """A configured seed would give every guard start the same noise stream (subtractable)."""
    body = {"inputs": x[:1].tolist()}
    first = []
    for i in range(2):  # two guard starts, the same first request
        cfg = base_config(tmp_path / str(i))
        cfg["roles"]["partner"] = {"policy": {"noise": {"scale": 0.05, "seed": 0}}}
        url, _ = make_guard(cfg)
        first.append(json.loads(call(url, "/v1/models/digits/predict", body, KEYS["partner"])[2])["scores"])
    assert first[0] != first[1]


def _metric(url, prefix):
    m = urllib.request.urlopen(url + "/metrics").read().decode()
    return [ln for ln in m.splitlines() if ln.startswith(prefix)]


def test_a_revoked_key_is_refused_even_when_a_reload_fails_once(make_guard, tmp_path, x):
    import sqlite3

    store = KeyStore(tmp_path / "keys.db")
    key, _ = store.add("partner", "acme")
    url, guard = make_guard(base_config(tmp_path, auth={"key_store": str(store.path)}))
    body = {"inputs": x[:1].tolist()}
    assert call(url, "/v1/models/digits/predict", body, key)[0] == 200
    real_read = guard.auth.store.read
    fails = {"n": 1}
    now = [1e9]
    guard.auth.clock = lambda: now[0]

    def flaky():
        if fails["n"]:
            fails["n"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real_read()

    guard.auth.store.read = flaky
    store.revoke("acme")
    now[0] += 1.0
    s, _, raw = call(url, "/v1/models/digits/predict", body, key)
    assert s == 503  # fail closed, never the stale (revoked) key
    assert json.loads(raw) == {
        "code": "auth_unavailable",
        "error": "the key store cannot be read (OperationalError); try later",
    }
    assert records(guard)[-1]["status"] == 503
    now[0] += 1.0  # the failed read did not mark the change as seen: it is read again
    s, _, raw = call(url, "/v1/models/digits/predict", body, key)
    assert s == 401 and json.loads(raw)["error"] == "invalid or revoked API key"


def test_upstream_failures_never_reveal_the_upstream_url_and_are_always_audited(
    make_guard, tmp_path, x, caplog
):
    from invguard.guard import from_dict
    from invguard.guard.upstream import build_model
    from tests.guard.bare import failing_app

    for app, output_name, kind in (
        (failing_app(500), None, "status"),
        (failing_app(200, {"outputs": [1]}), "logits", "malformed"),  # was an AttributeError -> 500
    ):
        with serve(app) as up:
            cfg = base_config(tmp_path / kind)
            url_with_secrets = up.replace("http://", "http://svc:s3cr3t@") + "/v2/models/digits/infer"
            upstream = {"url": url_with_secrets + "?token=q-s3cr3t&tenant=7"}
            if output_name:
                upstream["output_name"] = output_name
            cfg["model"] = {
                "name": "digits",
                "kind": "proxy",
                "input_shape": [1, 8, 8],
                "num_classes": 10,
                "input_range": [0, 1],
                "upstream": upstream,
            }
            url, guard = make_guard(cfg, model=build_model(from_dict(cfg).model))
            s, _, raw = call(url, "/v1/models/digits/predict", {"inputs": x.tolist()}, KEYS["default"])
            assert s == 502, raw
            assert json.loads(raw) == {"code": "upstream_error", "error": "upstream model server error"}
            rec = records(guard)[-1]
            assert rec["decision"] == "upstream_error" and rec["status"] == 502
            assert "s3cr3t" not in guard.audit.path.read_text() and "***@127.0.0.1" in rec["error"]
            assert rec["error"].startswith(f"UpstreamError: upstream POST http://***@{up[len('http://') :]}")
            assert "/v2/models/digits/infer?***" in rec["error"]  # the query string is redacted too
            assert "s3cr3t" not in caplog.text and "upstream POST http://***@" in caplog.text
            assert _metric(url, f'invguard_guard_upstream_errors_total{{kind="{kind}"}}') != []


def test_model_errors_deep_nesting_and_internal_errors_are_audited_and_metered(make_guard, tmp_path, x):
    class Broken:
        input_shape, num_classes = (1, 8, 8), 10

        async def predict(self, batch):
            raise TargetError("model gave outputs of the wrong shape for a batch of 1")

        async def start(self):
            return None

        async def close(self):
            return None

        async def ready(self):
            return True

    cfg = base_config(tmp_path)
    cfg["roles"]["default"]["budget"] = {"day": 3}
    url, guard = make_guard(cfg, model=Broken())
    body = {"inputs": x[:2].tolist()}
    for _ in range(3):  # the failed rows are refunded: the budget of 3 rows never runs out
        s, _, raw = call(url, "/v1/models/digits/predict", body, KEYS["default"])
        assert s == 502 and json.loads(raw) == {"code": "upstream_error", "error": "model error"}
    assert records(guard)[-1]["error"].startswith("TargetError: model gave outputs of the wrong shape")
    # data nested ~950 deep (RecursionError before the limiter): a 400, audited
    deep = b'{"inputs":[{"name":"x","shape":[1,1,8,8],"datatype":"FP32","data":' + b"[" * 950
    deep += b"1" + b"]" * 950 + b"}]}"
    s, _, raw = call(url, "/v2/models/digits/infer", deep, KEYS["default"])
    assert s == 400 and json.loads(raw) == {
        "code": "bad_input",
        "error": "inputs[0].data: must be a list of numbers, flat or nested as [1, 1, 8, 8] (not a list of "
        "numbers (ragged, or other values))",
    }
    # any other failure: a 500 with a record and metrics
    guard._parse_v1 = lambda b: (_ for _ in ()).throw(RuntimeError("bug"))
    s, _, raw = call(url, "/v1/models/digits/predict", body, KEYS["default"])
    assert s == 500 and json.loads(raw) == {"code": "internal_error", "error": "internal error"}
    recs = records(guard)
    assert [(r["status"], r["decision"]) for r in recs[-2:]] == [(400, "rejected"), (500, "error")]
    assert _metric(
        url, 'invguard_guard_requests_total{role="default",route="/v1/models/{name}/predict",status="500"}'
    )


def test_requests_without_a_key_are_limited_per_address_and_never_stored(make_guard, tmp_path, x):
    cfg = base_config(
        tmp_path, audit={"store_inputs": True}, server={"anonymous_rate": {"burst": 5, "per_second": 0.01}}
    )
    url, guard = make_guard(cfg)
    body = {"inputs": x[:1].tolist()}
    got = [call(url, "/v1/models/digits/predict", body, "wrong-key")[0] for _ in range(8)]
    got.append(call(url, "/nowhere", body, method="POST")[0])
    got.append(call(url, "/v1/models/digits/predict/", body, KEYS["default"])[0])
    assert got == [401] * 5 + [429] * 5
    s, h, raw = call(url, "/v1/models/digits/predict", body, "wrong-key")
    assert s == 429 and h["retry-after"] == "1"
    assert json.loads(raw) == {
        "code": "rate_limited",
        "error": "too many requests without a valid API key from this address",
    }
    # a valid key is not affected
    assert call(url, "/v1/models/digits/predict", body, KEYS["default"])[0] == 200
    recs = records(guard)
    assert [r["status"] for r in recs] == [401] * 5 + [429, 200]  # refusals recorded once a second
    assert all("input" not in r for r in recs[:-1]) and "input" in recs[-1]
    assert _metric(url, 'invguard_guard_limit_violations_total{kind="rate_limited",role="anonymous"} 6.0')


def test_trailing_slash_is_a_404_and_content_type_encoding_are_checked(make_guard, x):
    url, guard = make_guard()
    body = {"inputs": x[:1].tolist()}
    s, h, raw = call(url, "/v1/models/digits/predict/", body, KEYS["default"])
    assert s == 404 and "location" not in {k.lower() for k in h}
    assert json.loads(raw)["code"] == "not_found"
    assert records(guard)[-1]["status"] == 404
    s, _, raw = call(
        url, "/v1/models/digits/predict", body, KEYS["default"], headers={"Content-Type": "text/plain"}
    )
    assert s == 415 and json.loads(raw) == {
        "code": "unsupported_media_type",
        "error": "Content-Type 'text/plain' is not supported; send application/json",
    }
    s, _, raw = call(
        url, "/v1/models/digits/predict", body, KEYS["default"], headers={"Content-Encoding": "gzip"}
    )
    assert s == 415 and json.loads(raw)["error"] == (
        "Content-Encoding 'gzip' is not supported; send the JSON body unencoded"
    )
    h = {"Content-Type": "application/json; charset=utf-8"}
    assert call(url, "/v1/models/digits/predict", body, KEYS["default"], headers=h)[0] == 200
    assert [r["status"] for r in records(guard)] == [404, 415, 415, 200]


def test_conflicting_keys_and_a_batch_larger_than_the_whole_budget(make_guard, tmp_path, x):
    cfg = base_config(tmp_path, auth={"header": "X-Model-Key"})
    cfg["roles"]["default"]["budget"] = {"day": 3}
    url, _ = make_guard(cfg)
    body = {"inputs": x[:1].tolist()}
    h = {"X-Model-Key": KEYS["default"], "Authorization": f"Bearer {KEYS['internal']}"}
    s, _, raw = call(url, "/v1/models/digits/predict", body, headers=h)
    assert s == 401 and json.loads(raw)["error"] == (
        "conflicting API keys: the X-Model-Key and Authorization: Bearer values differ; send one key"
    )
    s, _, raw = call(
        url, "/v1/models/digits/predict", {"inputs": x[:4].tolist()}, headers={"X-Model-Key": KEYS["default"]}
    )
    assert s == 400 and json.loads(raw) == {
        "code": "batch_exceeds_budget",
        "error": "a batch of 4 rows exceeds the whole day budget of 3 rows: it can never be served; "
        "send smaller batches",
    }
    s, h, _ = call(url, "/v1/models/digits/predict", body, headers={"X-Model-Key": KEYS["default"]})
    assert s == 200 and '"day";q=3;qu="rows";w=86400' in h["ratelimit-policy"]
    spec = json.loads(urllib.request.urlopen(url + "/openapi.json").read())
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-Model-Key"


def test_the_signing_key_is_kept_out_of_the_log_directory(make_guard, tmp_path):
    from invguard.guard import from_dict
    from invguard.guard.app import Guard

    _, guard = make_guard()
    key_dir = tmp_path.with_name(tmp_path.name + "-keys")
    assert (key_dir / "audit.jsonl.ed25519.pem").exists() and guard.warnings == []
    assert not list(tmp_path.glob("*.pem"))
    cfg = base_config(tmp_path / "b", audit={"signing_key": str(tmp_path / "b" / "k.pem")})
    warned = Guard(from_dict(cfg), model=guard.model).warnings
    assert warned == [
        f"audit.signing_key {tmp_path / 'b' / 'k.pem'} is inside the audit log's directory: whoever can "
        "rewrite the log can also re-sign it; keep the key elsewhere"
    ]


def test_metrics_can_require_a_key_of_a_metrics_role(make_guard, tmp_path):
    url, _ = make_guard(base_config(tmp_path, metrics={"roles": ["internal"]}))
    s, _, raw = call(url, "/metrics", method="GET")
    assert s == 401 and json.loads(raw)["code"] == "unauthorized"
    s, _, raw = call(url, "/metrics", method="GET", key=KEYS["partner"])
    assert (
        s == 403
        and json.loads(raw)["error"] == "role 'partner' may not read /metrics (metrics.roles: ['internal'])"
    )
    s, _, raw = call(url, "/metrics", method="GET", key=KEYS["internal"])
    assert s == 200 and b"invguard_guard_requests_total" in raw
    from invguard.core.errors import ConfigError
    from invguard.guard import from_dict

    with pytest.raises(ConfigError, match=r"metrics.roles: 'ops' is not one of the roles"):
        from_dict(base_config(tmp_path, metrics={"roles": ["ops"]}))


def test_kserve_v2_nested_data_and_the_http_target_against_the_guards_own_v2_route(
    make_guard, torch_model, x
):
    """The v2 protocol allows nested ``data`` (row-major): it is served like the flat form. And
    ``HttpTarget(preset="kserve-v2")`` reads the guard's answer by name and shape (the scores, not
    the labels that come first)."""
    url, _ = make_guard()
    flat = v2_body(x)
    nested = {"inputs": [{**flat["inputs"][0], "data": x.tolist()}]}
    answers = []
    for body in (flat, nested):
        s, _, raw = call(url, "/v2/models/digits/infer", body, KEYS["partner"])
        assert s == 200, raw
        answers.append(json.loads(raw)["outputs"])
    assert answers[0] == answers[1] and [o["name"] for o in answers[0]] == ["labels", "scores"]
    target = HttpTarget(
        url + "/v2/models/digits/infer",
        preset="kserve-v2",
        returns="scores",
        api_key=KEYS["partner"],
        input_shape=(1, 8, 8),
        num_classes=10,
    )
    pred = target.predict(x)
    truth = torch_model.target.predict(x)
    assert pred.scores.shape == (4, 10) and (pred.labels == truth.labels).all()
    assert np.allclose(pred.scores, np.asarray(answers[0][1]["data"]).reshape(4, 10))
    labels = HttpTarget(
        url + "/v2/models/digits/infer",
        preset="kserve-v2",
        returns="labels",
        api_key=KEYS["default"],
        input_shape=(1, 8, 8),
        num_classes=10,
    ).predict(x)
    assert (labels.labels == truth.labels).all()
