"""Gradient leakage: label recovery, reconstruction attacks, secure aggregation, DP and M5 on 8x8 digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

import invguard as ig
from invguard.attacks import RunContext
from invguard.core import AccessError, ConfigError
from invguard.core.result import AttackResult
from invguard.federated import DPConfig, FederatedSetup, RawAccessLog, secagg
from invguard.judges.gradient import match


@pytest.fixture(scope="session")
def gctx(tmp_path_factory):
    return RunContext(cache_dir=tmp_path_factory.mktemp("gradient-cache"))


@pytest.fixture(scope="session")
def init_mlp(digits):
    """An untrained digits MLP: the model a federation starts from."""
    import torch

    from invguard.models import build

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build({"arch": "mlp", "hidden": [64], "input_shape": [1, 8, 8], "num_classes": 10})


def fed(module, **setup):
    from invguard.federated.target import FederatedTarget

    return FederatedTarget(module, input_shape=(1, 8, 8), setup=FederatedSetup(**setup))


def simulate(module, digits, seed=0, log=None, **setup):
    from invguard.federated.simulation import Simulation

    s = FederatedSetup(**setup)
    sim = Simulation(
        module, digits.members.X, digits.members.y, s, np.random.default_rng(seed), access_log=log
    )
    return sim, sim.run()


# ------------------------------------------------------------------------------------- labels


def test_label_recovery_is_exact_at_batch_1(digits_mlp, digits, gctx):
    r = ig.attacks.get("gradient.labels")().run(
        fed(digits_mlp, clients=8, batch_size=1), digits, context=gctx
    )
    assert r.metric("label_accuracy").value == 1.0
    assert r.metric("raw_accesses").value == 16  # 8 aggregator reads + 8 attacker reads


def test_count_based_label_recovery_at_batch_8_counts_repeated_labels(init_mlp, digits):
    from invguard.attacks.gradient.labels import recover_labels
    from invguard.judges.gradient import label_overlap

    _, obs = simulate(init_mlp, digits, clients=6, batch_size=8)
    y = digits.members.y
    acc = [label_overlap(recover_labels(init_mlp, o, 10, digits.public), y[o.truth]) / 8 for o in obs]
    assert np.mean(acc) >= 0.95
    assert any(len(set(y[o.truth])) < 8 for o in obs)  # batches with repeated labels were among them


# ------------------------------------------------------------------------------- reconstruction


def test_analytic_recovery_is_exact_at_batch_1_including_fedavg(digits_mlp, digits, gctx):
    attack = ig.attacks.get("gradient.analytic")(evaluator_epochs=3)
    r = attack.run(fed(digits_mlp, clients=3, batch_size=1), digits, seed=1, context=gctx)
    assert r.metric("psnr").value > 60 and r.metric("ssim").value > 0.999
    assert r.metric("ssim_lift").low > 0.2
    assert r.metric("evaluator_top1").value >= r.metric("baseline_evaluator_top1").value
    assert r.findings[0].severity == "high"
    assert r.arrays["reconstructions"].shape == r.arrays["true_inputs"].shape == (3, 1, 8, 8)
    back = AttackResult.from_json(json.loads(json.dumps(r.to_json())))
    assert back.metric("psnr").value == pytest.approx(r.metric("psnr").value)
    fedavg = attack.run(
        fed(digits_mlp, clients=2, batch_size=1, algorithm="fedavg", local_steps=5),
        digits,
        seed=1,
        context=gctx,
    )
    assert fedavg.metric("psnr").value > 60


def test_inverting_gradients_reaches_an_ssim_band_on_a_tiny_mlp(digits_mlp, digits):
    from invguard.attacks.gradient.inverting import InvertingGradients
    from invguard.metrics.inversion import pixel_similarity

    _, obs = simulate(digits_mlp, digits, seed=2, clients=2, batch_size=1)
    attack = InvertingGradients(iterations=150, restarts=1)
    rng = np.random.default_rng(0)
    sims = []
    for o in obs:
        rec, _ = attack._reconstruct(digits_mlp, o, digits.members.y[o.truth], (1, 8, 8), digits.public, rng)
        sims.append(pixel_similarity(rec, digits.members.X[o.truth].astype(float))[0][0])
    assert np.mean(sims) >= 0.85


def test_dlg_with_recovered_labels_reconstructs_batch_1(digits_mlp, digits):
    from invguard.attacks.gradient.dlg import DeepLeakage
    from invguard.metrics.inversion import pixel_similarity

    _, obs = simulate(digits_mlp, digits, seed=3, clients=1, batch_size=1)
    # with its default restarts: one random start can settle in a local optimum (0.91 here on one
    # CPU's float rounding, 1.0 with two)
    rec, _loss = DeepLeakage(iterations=30, restarts=2)._reconstruct(
        digits_mlp, obs[0], digits.members.y[obs[0].truth], (1, 8, 8), digits.public, np.random.default_rng(0)
    )
    assert pixel_similarity(rec, digits.members.X[obs[0].truth].astype(float))[0][0] > 0.95


def test_optimal_matching_undoes_a_shuffled_batch(digits):
    X = digits.members.X[:5].astype(float)
    perm = np.array([3, 0, 4, 1, 2])
    assert np.array_equal(X[perm][match(X[perm], X)], X)


# ------------------------------------------------------------------------------ secure aggregation


def test_secure_aggregation_masks_cancel_exactly_and_hide_each_update():
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=500) for _ in range(5)]
    clients = secagg.make_clients(5, np.random.default_rng(1))
    pks = [c.public_key for c in clients]
    masked = [c.masked(u, pks, round=1) for c, u in zip(clients, updates, strict=True)]
    with np.errstate(over="ignore"):
        exact = sum(secagg.encode(u) for u in updates[1:]) + secagg.encode(updates[0])
    assert np.array_equal(np.sum(np.stack(masked), axis=0, dtype=np.uint64), exact)  # bit-exact in Z/2^64
    assert np.max(np.abs(secagg.unmask_sum(masked) - np.sum(updates, axis=0))) <= 5 * 2.0**-24
    lone = secagg.decode(masked[0])
    assert abs(np.corrcoef(lone, updates[0])[0, 1]) < 0.15  # one masked vector says nothing of its update


def test_one_clients_update_is_not_recovered_from_the_secure_aggregate(digits_mlp, digits, gctx):
    attack = ig.attacks.get("gradient.analytic")(evaluator_epochs=3)
    plain = attack.run(fed(digits_mlp, clients=8, batch_size=1), digits, context=gctx)
    secure = attack.run(
        fed(digits_mlp, clients=8, batch_size=1, rounds=4, secure_aggregation=True), digits, context=gctx
    )
    assert plain.metric("ssim").value > 0.999
    lift = secure.metric("ssim_lift")
    assert lift.low is not None and lift.low <= 0.0 <= lift.high  # no better than the public mean image
    assert secure.metric("raw_accesses").value == 0
    assert secure.findings[0].title == "No reconstruction beyond the no-model baseline"


def test_m5_counts_raw_accesses_and_is_zero_under_secure_aggregation(digits_mlp, digits):
    from prometheus_client import CollectorRegistry

    from invguard.federated.simulation import Aggregator

    reg = CollectorRegistry()
    log = RawAccessLog(reg, clock=lambda: 42.0)
    simulate(digits_mlp, digits, log=log, clients=3, batch_size=2, rounds=2)
    assert log.count == 12 and log.by_who() == {"aggregator": 6, "attack": 6}
    assert log.events[0].to_json() == {
        "who": "aggregator", "round": 1, "client": 0, "secure_aggregation": False, "at": 42.0,
    }  # fmt: skip
    got = reg.get_sample_value(
        "invguard_gradient_raw_accesses_total", {"who": "aggregator", "secure_aggregation": "false"}
    )
    assert got == 6.0
    secure = RawAccessLog(CollectorRegistry())
    simulate(digits_mlp, digits, log=secure, clients=3, batch_size=2, rounds=2, secure_aggregation=True)
    assert secure.count == 0
    agg = Aggregator(2, secure_aggregation=True, access_log=secure, round=1, rng=np.random.default_rng(0))
    agg.submit(0, np.ones(3))
    with pytest.raises(AccessError, match=r"under secure aggregation the server holds only masked updates"):
        agg.client_update(0, "curious-operator")


# ----------------------------------------------------------------------------------------- DP


def test_dp_noise_follows_its_accountant(digits_mlp, digits):
    from opacus.accountants import RDPAccountant

    dp = DPConfig(clip=0.5, noise_multiplier=1.3, placement="client")
    noise = dp.noise((200_000,), np.random.default_rng(0))
    assert noise.std() == pytest.approx(0.65, rel=0.01)
    ours = dp.epsilon(rounds=20)
    opacus = RDPAccountant()
    opacus.history = [(1.3, 1.0, 20)]
    assert ours == pytest.approx(opacus.get_epsilon(delta=1e-5), rel=0.05)
    # the simulation clips every update to the bound before adding exactly that noise
    _sim, obs = simulate(
        digits_mlp, digits, clients=2, batch_size=1, dp=DPConfig(clip=1e-3, noise_multiplier=0.0)
    )
    norms = [np.sqrt(sum(float(np.sum(np.square(u))) for u in o.update)) for o in obs]
    assert max(norms) <= 1e-3 + 1e-9 and all(o.clipped for o in obs)


# ------------------------------------------------------------------------------------ bad input


def test_bad_setups_and_models_are_refused_with_what_and_where(digits):
    with pytest.raises(ConfigError, match=r"federated setup: clients must be a whole number >= 1, got 0; "
                       r"fedsgd takes exactly one local step \(local_steps=1\), got 3"):  # fmt: skip
        from invguard.federated.simulation import Simulation

        Simulation(None, digits.members.X, digits.members.y, FederatedSetup(clients=0, local_steps=3), None)
    with pytest.raises(
        ConfigError, match=r"gradient.inverting: iterations must be a whole number >= 1, got 0"
    ):
        ig.attacks.get("gradient.inverting")(iterations=0)
    from invguard.models import build

    cnn = build({"arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(ConfigError, match=r"gradient.analytic needs a fully connected first layer"):
        ig.attacks.get("gradient.analytic")().run(fed(cnn, clients=1), digits)


# ------------------------------------------------------------------------------------- Flower


def _client_app(module, X, y, *, steps, lr):
    """A real Flower ClientApp: FedAvg local SGD on its own records."""
    import torch
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from invguard.federated.updates import local_update, module_params

    app = ClientApp()

    @app.train()
    def train(msg, context):
        arrays = msg.content["arrays"]
        params = module_params(module, [arrays[k].numpy() for k in arrays])
        delta = local_update(
            module, params, torch.as_tensor(X), torch.as_tensor(y), kind="delta", steps=steps, lr=lr
        )
        new = {k: (params[k] + d).detach() for k, d in zip(params, delta, strict=True)}
        content = RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": len(y)})})
        return Message(content=content, reply_to=msg)

    return app


def test_the_flower_strategy_wrapper_audits_a_two_round_simulation(digits_mlp, digits, gctx):
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from invguard.federated.flower import auditing_strategy, check_deployment, run_local
    from invguard.federated.target import FederatedTarget

    X, y = digits.members.X[:3], digits.members.y[:3]
    apps = [_client_app(digits_mlp, X[i : i + 1], y[i : i + 1], steps=2, lr=0.1) for i in range(3)]
    log = RawAccessLog()
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
    strategy = auditing_strategy(inner, access_log=log, batch_size=1, local_steps=2, local_lr=0.1)
    initial = ArrayRecord(dict(digits_mlp.state_dict()))
    result = run_local(strategy, apps, initial, num_rounds=2)
    assert result.arrays is not None
    assert len(strategy.observations) == 6 and log.by_who() == {"invguard-audit": 6, "strategy:FedAvg": 6}
    assert {e.round for e in log.events} == {1, 2} and {e.client for e in log.events} == {101, 102, 103}
    target = FederatedTarget(
        digits_mlp, input_shape=(1, 8, 8), setup=FederatedSetup(clients=3), observations=strategy.observations
    )
    r = ig.attacks.get("gradient.analytic")(evaluator_epochs=3).run(target, digits, context=gctx)
    assert r.metric("raw_accesses").value == 0  # the attack read what the wrapper had already logged
    recs = r.arrays["reconstructions"]
    for o, rec in zip(strategy.observations, recs, strict=True):
        assert np.max(np.abs(rec - X[o.clients[0] - 101])) < 1e-4  # each client's record, exactly
    check = check_deployment(strategy=strategy)
    assert not check.secure_aggregation and check.dp is None
    assert "neither secure aggregation nor DP" in check.problems[-1]


def test_deployment_check_finds_secagg_plus_and_dp_on_both_sides():
    from flwr.client.mod import LocalDpMod, secaggplus_mod
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    from invguard.federated.flower import check_deployment

    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0,
                                                     num_sampled_clients=8)  # fmt: skip
    wf = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2))
    ok = check_deployment(strategy=dp, workflow=wf, client_mods=[secaggplus_mod])
    assert ok.secure_aggregation and ok.dp == "central" and not ok.problems
    half = check_deployment(strategy=FedAvg(), workflow=wf, client_mods=[LocalDpMod(1.0, 1.0, 1.0, 1e-5)])
    assert not half.secure_aggregation and half.dp == "local"
    assert "the clients do not use secaggplus_mod" in half.problems[0]


# ------------------------------------------------------------------------------------ the audit


def test_a_federated_audit_target_parses_resolves_and_builds(digits, digits_mlp, tmp_path):
    from invguard import models
    from invguard.audit.config import parse_config
    from invguard.audit.resolve import resolve_target
    from invguard.federated.target import FederatedTarget

    raw = {
        "target": {
            "kind": "federated",
            "model": str(models.save(digits_mlp, tmp_path / "m.pt")),
            "federated": {"clients": 8, "batch_size": 8, "secure_aggregation": True, "snapshot": "init"},
        },
        "attacks": ["gradient.labels"],
        "gates": [{"metric": "gradient.labels.raw_accesses", "op": "==", "threshold": 0}],
    }
    cfg = parse_config(raw)
    rt = resolve_target(cfg.target, digits, seed=0, cache_dir=None)
    t = rt.build()
    assert isinstance(t, FederatedTarget) and t.setup.clients == 8 and t.setup.secure_aggregation
    assert "secure aggregation; attacker: the server, holding only the aggregate" in t.describe()
    r = ig.attacks.get("gradient.labels")().run(t, digits)
    assert r.metric("raw_accesses").value == 0 and r.metric("label_accuracy").value >= 0.9
    bad = {
        **raw,
        "target": {**raw["target"], "federated": {"algorithm": "fedsgd", "local_steps": 5, "topk": 2}},
    }
    with pytest.raises(ConfigError) as e:
        parse_config(bad)
    assert "target.federated.topk: Input should be less than or equal to 1" in str(e.value)
    bad["target"]["federated"] = {"local_steps": 5}
    with pytest.raises(ConfigError, match=r"fedsgd takes exactly one local step \(local_steps=1\), got 5"):
        parse_config(bad)


def test_the_report_shows_reconstructions_beside_the_true_inputs(digits):
    from invguard.core.result import AttackResult
    from invguard.report import figures

    X = digits.members.X[:3].astype(float)
    r = AttackResult(
        attack="gradient.analytic", params={}, target="WHITEBOX", access="WHITEBOX", metrics={},
        queries_used=0, wall_time_s=0.0, seed=0,
        arrays={"reconstructions": X, "true_inputs": X, "reconstruction_classes": digits.members.y[:3] * 1.0},
    )  # fmt: skip
    entry = json.loads(json.dumps(r.to_json()))
    assert figures.reconstruction_grid(entry).startswith("data:image/png;base64,")
