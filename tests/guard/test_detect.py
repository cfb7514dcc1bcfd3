"""Detection in the guard: each detector on synthetic attack and benign streams, shared state in
Redis across two guard processes, silent mitigation, expiry and lifting, bounded state,
calibration to a target FPR, and the audit trail of detections."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from invguard.guard.detect.config import DetectionConfig
from invguard.guard.detect.engine import Detection
from invguard.guard.detect.state import MemoryState
from tests.guard.conftest import KEYS, audit_keys, base_config, start_guard_process, stop_process
from tests.guard.test_app import call, records
from tests.servers import free_port

SECRET = b"s" * 32
PREDICT = "/v1/models/digits/predict"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def detection(cfg: DetectionConfig | None = None, **kw) -> Detection:
    cfg = cfg or DetectionConfig(enabled=True)
    return Detection(
        cfg,
        input_shape=(1, 8, 8),
        secret=SECRET,
        roles={"r": None},
        limiter=None,
        registry=CollectorRegistry(),
        **kw,
    )


def fired(det: Detection, stream: np.ndarray, client: str = "c") -> dict[str, int]:
    """Replay a stream (one query per request); the first request each detector fires at."""

    async def go() -> dict[str, int]:
        first: dict[str, int] = {}
        for i, row in enumerate(stream):
            _, obs = await det.measure(client, "r", row.reshape(1, -1))
            for name, d in det.detectors.items():
                if name not in first and d.check(obs) is not None:
                    first[name] = i
        return first

    return asyncio.run(go())


@pytest.fixture(scope="module")
def held_out(digits):
    return np.concatenate([digits.evaluation.X, digits.nonmembers.X]).reshape(-1, 64)


def test_each_detector_flags_its_attack_stream_and_not_benign_traffic(held_out):
    rng = np.random.default_rng(0)
    benign = held_out[:300]
    assert fired(detection(), benign) == {}
    x0 = held_out[0]
    # near-duplicates (an iterative search at a small step): fingerprints and k-NN both see it
    probes = np.clip(x0 + rng.normal(0, 0.002, (60, 64)), 0, 1)
    got = fired(detection(), probes)
    assert got["fingerprint"] < 20 and got["knn"] < 20
    # a wider search cloud (noise far above the quantisation step): fingerprints miss it, k-NN does not
    cloud = np.clip(x0 + rng.normal(0, 0.03, (60, 64)), 0, 1)
    got = fired(detection(), cloud)
    assert "fingerprint" not in got and got["knn"] < 20
    # an NES search (antithetic pairs around a drifting centre): PRADA's distances are not natural
    c, nes = x0.copy(), []
    for _ in range(30):
        for _ in range(4):
            u = rng.normal(size=64)
            nes += [np.clip(c + 0.05 * u, 0, 1), np.clip(c - 0.05 * u, 0, 1)]
        c = np.clip(c + 0.02 * rng.normal(size=64), 0, 1)
    only_prada = DetectionConfig(
        enabled=True, detectors={"knn": {"enabled": False}, "fingerprint": {"enabled": False}}
    )
    assert fired(detection(only_prada), np.array(nes))["prada"] <= 30
    # volume: many distinct records beyond the daily limit, with no similarity at all
    vol = detection(DetectionConfig(enabled=True, detectors={"volume": {"distinct_per_day": 100}}))
    got = fired(vol, held_out[:150])
    assert got == {"volume": 99}


def nes_stream(x0: np.ndarray, iters: int, rng: np.random.Generator, sigma: float = 0.1) -> np.ndarray:
    """An NES search in pixels, batched as the attack sends it: per iteration, 5 trajectories of
    10 mirrored pairs (``c + s*u`` then ``c - s*u``), then the 5 centres (clipped to [0, 1]; the
    centres start as a faded copy of ``x0``, so that clipping bends few pairs)."""
    centres = np.clip(0.25 + 0.5 * x0 + rng.normal(0, 0.05, (5, x0.size)), 0, 1)
    out = []
    for _ in range(iters):
        u = rng.normal(size=(5, 10, x0.size))
        u = np.concatenate([u, -u], axis=1)
        out += list(np.clip(centres[:, None, :] + sigma * u, 0, 1).reshape(-1, x0.size))
        out += list(centres)
        centres = np.clip(centres + 0.05 * rng.normal(size=centres.shape), 0, 1)
    return np.array(out, dtype=np.float32)


def fired_batched(det: Detection, stream: np.ndarray, batch: int, client: str = "c") -> dict[str, int]:
    """Like :func:`fired`, in requests of ``batch`` rows: the queries sent when each detector fired."""

    async def go() -> dict[str, int]:
        first: dict[str, int] = {}
        for s in range(0, len(stream), batch):
            _, obs = await det.measure(client, "r", stream[s : s + batch])
            for name, d in det.detectors.items():
                if name not in first and d.check(obs) is not None:
                    first[name] = s + len(stream[s : s + batch])
        return first

    return asyncio.run(go())


def test_mirrored_pairs_of_an_nes_search_are_flagged_and_natural_batches_are_not(held_out):
    from invguard.guard.detect.antithetic import shared_midpoints

    rng = np.random.default_rng(5)
    only = DetectionConfig(
        enabled=True,
        detectors={n: {"enabled": False} for n in ("fingerprint", "knn", "prada", "volume", "subspace")},
    )
    nes = nes_stream(held_out[0], 3, rng)
    got = fired_batched(detection(only), nes, 64)
    assert got["antithetic"] == 64  # the first request: its blocks of mirrored pairs
    # one query per request too: the window spans requests
    assert fired(detection(only), nes)["antithetic"] < 40
    # natural images, batched or one by one, with noisy copies and shifts: no shared midpoints
    assert fired_batched(detection(only), held_out[:640], 64) == {}
    copies = np.concatenate([held_out[:100], np.clip(held_out[:100] + rng.normal(0, 0.02, (100, 64)), 0, 1)])
    rng.shuffle(copies)
    assert fired_batched(detection(only), copies, 64) == {}
    assert fired(detection(only), copies) == {}
    # the statistic itself: 4 pairs about one centre are a group of 4 (each pair has 3 partners)
    c = held_out[1]
    u = rng.normal(size=(4, 64))
    rows = np.concatenate([c + 0.2 * u, c - 0.2 * u])
    assert shared_midpoints(rows, len(rows), 0.35, 0.1) == 3
    assert shared_midpoints(held_out[:24], 24, 0.35, 0.1) <= 1


def test_a_search_in_a_public_pca_prior_is_flagged_by_its_missing_residual(digits, held_out):
    """The subspace detector needs the PCA encoder calibration fits: prior samples (public mean plus
    8 components) leave almost no energy outside the encoder's components; held-out digits do."""
    from invguard.guard.detect.encoder import Encoder

    rng = np.random.default_rng(6)
    pub = digits.public.X.reshape(-1, 64).astype(np.float64)
    mean = pub.mean(axis=0)
    _, s, vt = np.linalg.svd(pub - mean, full_matrices=False)
    std = s[:8] / np.sqrt(len(pub) - 1)
    prior = np.clip(mean + (rng.normal(size=(200, 8)) * std) @ vt[:8], 0, 1).astype(np.float32)
    only = DetectionConfig(
        enabled=True,
        detectors={n: {"enabled": False} for n in ("fingerprint", "knn", "prada", "volume", "antithetic")},
    )
    idle = detection(only)  # the random-projection encoder: idle, whatever the stream
    assert fired(idle, prior) == {}

    def pca() -> Detection:
        det = detection(only)
        det.encoder = Encoder.pca(pub, 32)
        det.detectors["subspace"].values["subspace.threshold"] = 0.02
        return det

    assert fired(pca(), held_out[:400]) == {}
    assert fired(pca(), prior) == {"subspace": 7}  # as soon as it has min_queries (8) of them
    assert fired_batched(pca(), prior, 64) == {"subspace": 64}


def test_a_similarity_finding_alone_flags_and_a_second_detector_mitigates(make_guard, tmp_path, digits):
    weak = ["fingerprint", "knn", "prada"]
    cfg = detect_cfg(tmp_path, partner={"action": "tighten", "corroborate": weak})
    cfg["detection"]["detectors"] = {"knn": {"enabled": False}, "prada": {"enabled": False}}
    url, g = make_guard(cfg)
    x0 = digits.evaluation.X[5]
    for p in probe_stream(x0, 40, seed=7):  # near-duplicates: only the fingerprints fire
        call(url, PREDICT, {"inputs": p[None].tolist()}, KEYS["partner"])
    recs = records(g)
    assert [r for r in recs if r.get("decision") == "mitigation"] == []
    flags = [r["detection"] for r in recs if r.get("decision") == "detection"]
    assert [f["detector"] for f in flags] == ["fingerprint"]  # one flag, however often it fires
    assert flags[0]["action"] == "none" and flags[0]["evidence"]["awaiting"] == "a second detector"
    _, _, raw = call(url, PREDICT, {"inputs": x0[None].tolist()}, KEYS["partner"])
    assert max(json.loads(raw)["scores"][0]) < 1.0  # not tightened
    # the same client starts a search with mirrored pairs: a detector outside `corroborate` acts
    nes = nes_stream(x0.reshape(-1), 2, np.random.default_rng(8)).reshape(-1, 1, 8, 8)
    for s0 in range(0, len(nes), 8):
        assert call(url, PREDICT, {"inputs": nes[s0 : s0 + 8].tolist()}, KEYS["partner"])[0] == 200
    recs = records(g)
    mits = [r["mitigation"] for r in recs if r.get("decision") == "mitigation"]
    assert [m["action"] for m in mits] == ["tighten"]
    dets = [r["detection"] for r in recs if r.get("decision") == "detection"]
    assert "antithetic" in {d["detector"] for d in dets[1:]}
    assert all(d["action"] == "tighten" for d in dets[1:])
    _, _, raw = call(url, PREDICT, {"inputs": x0[None].tolist()}, KEYS["partner"])
    assert sorted(json.loads(raw)["scores"][0]) == [0.0] * 9 + [1.0]


def test_keys_whose_queries_match_are_linked(held_out):
    rng = np.random.default_rng(1)
    det = detection()
    probes = np.clip(held_out[3] + rng.normal(0, 0.002, (150, 64)), 0, 1)

    async def go():
        obs = None
        for i, row in enumerate(probes):
            _, obs = await det.measure(f"key{i % 5}", "r", row.reshape(1, -1))
        return obs

    obs = asyncio.run(go())
    from invguard.guard.detect.volume import linked_clients

    linked = linked_clients(obs, det.thresholds["fingerprint.matches"].value)
    assert len(linked) >= 2 and set(linked) <= {"key0", "key1", "key2", "key3"}  # the last request: key4's
    f = det.detectors["volume"].check(obs)
    assert f is not None and f.evidence["reason"] == "keys"


def test_state_stays_within_its_bounds_under_a_long_stream():
    rng = np.random.default_rng(2)
    st = MemoryState(match=20, recent=8, history=16, postings=4, max_clients=10, max_hashes=3000)
    det = detection(state=st)

    async def go():
        for i in range(3000):
            await det.measure(f"c{i % 40}", "r", rng.random((1, 64), dtype=np.float32))

    asyncio.run(go())
    s = st.sizes()
    assert s["index_hashes"] <= 3000 and s["digests"] <= 3000 and s["clients"] <= 10
    assert s["index_postings"] <= 4 * s["index_hashes"]
    assert all(len(c.feats) <= 16 and len(c.flags) <= 8 for c in st._clients.values())


def detect_cfg(tmp_path, **roles):
    cfg = base_config(tmp_path)
    cfg["roles"]["admin"] = {"policy": "label_only"}
    cfg["auth"]["keys"].append(
        {
            "id": "ops",
            "sha256": __import__("hashlib").sha256(b"k-admin-0123456789").hexdigest(),
            "role": "admin",
        }
    )
    cfg["detection"] = {
        "enabled": True,
        "admin_roles": ["admin"],
        "roles": roles or {"partner": {"action": "tighten", "duration_seconds": 60}},
    }
    return cfg


def detecting_requests(recs):
    """The detection records grouped by the request that made them: a request's detectors write
    their records together, before the mitigation that request applied."""
    groups, current = [], []
    for r in recs:
        if r.get("decision") == "detection":
            current.append(r)
        elif r.get("decision") == "mitigation" and current:
            groups.append(current)
            current = []
    return groups + ([current] if current else [])


def probe_stream(x0, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(x0 + rng.normal(0, 0.002, (n, *x0.shape)), 0, 1).astype(np.float32)


def test_mitigation_is_silent_expires_and_is_lifted_by_an_admin(make_guard, tmp_path, digits):
    clock = Clock()
    url, guard = make_guard(detect_cfg(tmp_path), clock=clock)
    x = digits.evaluation.X
    s, h0, raw = call(url, PREDICT, {"inputs": x[:1].tolist()}, KEYS["partner"])
    before = json.loads(raw)
    assert s == 200 and len([v for v in before["scores"][0] if v > 0]) >= 2
    answers = []
    for p in probe_stream(x[5], 40):  # probing until the answers turn label-only, then stopping
        answers.append(call(url, PREDICT, {"inputs": p[None].tolist()}, KEYS["partner"]))
        if max(json.loads(answers[-1][2])["scores"][0]) == 1.0:
            break
    assert all(a[0] == 200 for a in answers) and len(answers) < 20
    # one detecting request (its detectors may fire together: one record each), one mitigation
    [first] = detecting_requests(records(guard))
    n_first = first[0]["detection"]["queries"]
    assert {r["detection"]["queries"] for r in first} == {n_first}
    assert n_first < 20
    after = json.loads(answers[-1][2])
    # same fields, same header names, same policy label: only the values are label-only (one-hot)
    assert after.keys() == before.keys() and after["policy"] == before["policy"]
    assert set(answers[-1][1]) == set(h0)
    assert sorted(after["scores"][0]) == [0.0] * 9 + [1.0]
    # the one-hot answers of the mitigation are the guard defending itself: counted apart, not in M2
    served = [r for r in records(guard) if r.get("decision") == "served"]
    n_mit = sum(1 for r in served if r.get("mitigated"))
    assert n_mit >= 1
    m = call(url, "/metrics", method="GET")[2].decode()
    assert f'invguard_guard_mitigated_scored_rows_total{{role="partner"}} {float(n_mit)}' in m
    assert f'invguard_guard_mitigated_high_confidence_responses_total{{role="partner"}} {float(n_mit)}' in m
    assert f'invguard_guard_response_entropy_nats_count{{role="partner"}} {float(len(served) - n_mit)}' in m
    # the admin API: admin role only
    assert call(url, "/admin/flagged", method="GET")[0] == 401
    s, _, raw = call(url, "/admin/flagged", key=KEYS["partner"], method="GET")
    assert s == 403 and "detection.admin_roles" in json.loads(raw)["error"]
    s, _, raw = call(url, "/admin/flagged", key="k-admin-0123456789", method="GET")
    [flag] = json.loads(raw)["flagged"]
    assert flag["client"] == "partner-client" and flag["mitigation"]["action"] == "tighten"
    assert flag["evidence"][0]["detector"] in ("fingerprint", "knn", "prada")
    # expiry: once the duration is over the client (who stopped probing) gets its role's answers
    # again, and it is recorded
    clock.t += 61
    asyncio.run_coroutine_threadsafe(guard.detection.expire(), guard.loop).result(10)
    s, _, raw = call(url, PREDICT, {"inputs": x[:1].tolist()}, KEYS["partner"])
    assert json.loads(raw) == before
    # a new detection, lifted by an admin
    for p in probe_stream(x[9], 40, seed=1):
        call(url, PREDICT, {"inputs": p[None].tolist()}, KEYS["partner"])
    assert call(url, PREDICT, {"inputs": x[:1].tolist()}, KEYS["partner"])[2] != json.dumps(before).encode()
    s, _, raw = call(url, "/admin/flagged/partner-client/lift", key="k-admin-0123456789")
    assert s == 200 and json.loads(raw)["lifted"] == "partner-client"
    assert json.loads(call(url, PREDICT, {"inputs": x[:1].tolist()}, KEYS["partner"])[2]) == before
    s, _, raw = call(url, "/admin/flagged/partner-client/lift", key="k-admin-0123456789")
    assert s == 404 and json.loads(raw)["code"] == "not_mitigated"
    # the audit trail: detections and every mitigation change, in a log that verifies
    from invguard.guard.auditlog import verify

    recs = records(guard)
    changes = [r["mitigation"]["change"] for r in recs if r.get("decision") == "mitigation"]
    assert changes == ["applied", "expired", "applied", "lifted"]
    assert len(detecting_requests(recs)) == 2
    assert all("input" not in r and "inputs" not in r.get("detection", {}).get("evidence", {}) for r in recs)
    rep = verify(guard.audit.path, public_key=audit_keys(guard.audit.path)[0], allow_missing_head=True)
    assert rep.ok
    m = call(url, "/metrics", method="GET")[2].decode()
    assert 'invguard_guard_mitigations_total{action="tighten",change="lifted"} 1.0' in m
    assert "invguard_guard_detections_total{" in m


def test_block_answers_403_and_benign_clients_are_untouched(make_guard, tmp_path, digits):
    cfg = detect_cfg(tmp_path, default={"action": "block"}, partner={"action": "tighten"})
    url, guard = make_guard(cfg)
    x = digits.evaluation.X
    got = [
        call(url, PREDICT, {"inputs": p[None].tolist()}, KEYS["default"])[0] for p in probe_stream(x[2], 30)
    ]
    assert got[0] == 200 and got[-1] == 403
    for row in x[:60]:  # a benign client on distinct images meanwhile
        s, _, raw = call(url, PREDICT, {"inputs": row[None].tolist()}, KEYS["partner"])
        assert s == 200 and len([v for v in json.loads(raw)["scores"][0] if v > 0]) >= 1
    flagged = [r["client"] for r in records(guard) if r.get("decision") == "detection"]
    assert flagged == ["default-client"]


def test_calibration_reaches_its_target_fpr_on_held_out_benign_traffic(tmp_path, digits, held_out):
    from typer.testing import CliRunner

    from invguard.cli import app as cli
    from invguard.guard.detect.engine import load_calibration

    sys_path = tmp_path / "guard.yaml"
    cfg = base_config(tmp_path)
    cfg["model"]["input_shape"] = [1, 8, 8]
    cfg["detection"] = {"enabled": True, "calibration": "cal.json"}
    sys_path.write_text(yaml.safe_dump(cfg))
    rng = np.random.default_rng(3)
    pub = digits.public.X.reshape(-1, 64)
    X = np.concatenate([pub, np.clip(pub + rng.normal(0, 0.02, pub.shape), 0, 1)])
    clients = np.repeat(np.arange(3), -(-len(X) // 3))[: len(X)]
    rng.shuffle(clients)
    np.savez(tmp_path / "benign.npz", X=X, client=clients)
    res = CliRunner().invoke(
        cli, ["guard", "calibrate", "--benign", str(tmp_path / "benign.npz"), "--fpr", "0.01", str(sys_path)]
    )
    assert res.exit_code == 0, res.output
    doc = load_calibration(str(tmp_path / "cal.json"))
    assert doc is not None and set(doc["thresholds"]) >= {
        "fingerprint.matches",
        "knn.threshold",
        "prada.threshold",
    }
    from invguard.guard import load

    gcfg = load(sys_path)
    det = Detection(
        gcfg.detection,
        input_shape=(1, 8, 8),
        secret=b"x" * 32,
        roles={"r": None},
        limiter=None,
        registry=CollectorRegistry(),
    )
    report = "\n".join(det.report())
    assert "knn.threshold" in report and "(calibrated)" in report and "encoder: pca" in report
    # held-out benign streams with the same kind of variation: flagged at about the target rate
    held = np.concatenate([held_out, np.clip(held_out + rng.normal(0, 0.02, held_out.shape), 0, 1)])
    rng.shuffle(held)
    flagged = total = 0
    by: dict[str, int] = {}

    async def go():
        nonlocal flagged, total
        for c, part in enumerate(np.array_split(held, 6)):
            for row in part:
                _, obs = await det.measure(f"h{c}", "r", row[None])
                total += 1
                hit = [n for n, d in det.detectors.items() if n != "volume" and d.check(obs) is not None]
                flagged += bool(hit)
                for n in hit:
                    by[n] = by.get(n, 0) + 1

    asyncio.run(go())
    assert total > 1500 and flagged / total <= 0.03, (by, doc["thresholds"])
    bad = CliRunner().invoke(
        cli, ["guard", "calibrate", "--benign", str(tmp_path / "none.npz"), str(sys_path)]
    )
    assert bad.exit_code == 2 and f"--benign: {tmp_path / 'none.npz'} does not exist" in bad.output


@pytest.mark.slow
def test_two_guard_processes_on_one_redis_see_an_attack_split_across_them(
    tmp_path, redis_url, sklearn_model_file, digits
):
    cfg = detect_cfg(tmp_path)
    cfg["model"] = {
        **cfg["model"],
        "kind": "sklearn",
        "path": str(sklearn_model_file),
        "input_shape": [1, 8, 8],
    }
    cfg["detection"].update(backend="redis", redis_url=redis_url, prefix=f"t{free_port()}")
    cfg["detection"]["salt_key"] = str(tmp_path / "salt")
    cfg["auth"]["keys"].append(
        {
            "id": "partner2",
            "sha256": __import__("hashlib").sha256(b"k-partner2-0123456789").hexdigest(),
            "role": "partner",
        }
    )
    procs, ports = [], []
    for i in range(2):
        c = json.loads(json.dumps(cfg))
        c["audit"]["path"] = str(tmp_path / f"g{i}" / "audit.jsonl")
        p = tmp_path / f"g{i}.yaml"
        p.write_text(yaml.safe_dump(c))
        ports.append(free_port())
        procs.append(start_guard_process(p, ports[-1]))
    try:
        x0 = digits.evaluation.X[7]
        for i, p in enumerate(probe_stream(x0, 24, seed=4)):  # alternate guards and keys
            key = KEYS["partner"] if i % 2 else "k-partner2-0123456789"
            call(f"http://127.0.0.1:{ports[i % 2]}", PREDICT, {"inputs": p[None].tolist()}, key)
        _, _, raw = call(
            f"http://127.0.0.1:{ports[0]}", "/admin/flagged", key="k-admin-0123456789", method="GET"
        )
        flagged = {f["client"]: f for f in json.loads(raw)["flagged"]}
        assert set(flagged) == {"partner-client", "partner2"}
        assert all(f["mitigation"]["action"] == "tighten" for f in flagged.values())
        ev = [e for f in flagged.values() for e in f["evidence"] if "linked_to" not in e]
        assert ev and ev[0]["queries"] <= 12 and ev[0]["linked"]
    finally:
        for p in procs:
            stop_process(p)
