"""Membership inference on tiny digits MLPs: efficacy bands, controls, refusals and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from invguard import attacks, policies
from invguard.attacks import RunContext
from invguard.core import Access, AccessError, ConfigError
from invguard.metrics import membership as mm

FRACTIONS = {"members": 0.15, "nonmembers": 0.3, "public": 0.25, "evaluation": 0.3}
RECIPE = {"epochs": 60, "lr": 3e-3, "batch_size": 64}
REGULARISED = {**RECIPE, "weight_decay": 0.05}


@pytest.fixture(scope="module")
def splits():
    from invguard import data

    return data.load("digits", seed=0, fractions=FRACTIONS)


def _spec(splits):
    return {"arch": "mlp", "hidden": [128], "input_shape": list(splits.input_shape), "num_classes": 10}


@pytest.fixture(scope="module")
def overfit_target(splits):
    from invguard.models.train import fit
    from invguard.targets import TorchTarget

    module, report = fit(
        _spec(splits), splits.members.X, splits.members.y, recipe="overfit", seed=0, **RECIPE
    )
    assert report.train_accuracy == 1.0
    return TorchTarget(module, input_shape=splits.input_shape)


@pytest.fixture(scope="module")
def small_splits():
    """Digits with a 90-record member set: an overfit model generalises visibly worse (test accuracy
    about 0.89), a leak that even a label-only or a shadow-model attacker must find."""
    from invguard import data

    return data.load(
        "digits", seed=0, fractions={"members": 0.05, "nonmembers": 0.3, "public": 0.35, "evaluation": 0.3}
    )


@pytest.fixture(scope="module")
def small_overfit_target(small_splits):
    from invguard.models.train import fit
    from invguard.targets import TorchTarget

    s = small_splits
    module, report = fit(_spec(s), s.members.X, s.members.y, recipe="overfit", seed=0, **RECIPE)
    assert report.train_accuracy == 1.0
    return TorchTarget(module, input_shape=s.input_shape)


@pytest.fixture(scope="module")
def careful_target(splits):
    """Strong weight decay and three times the training data (members plus the evaluation split)."""
    from invguard.models.train import fit
    from invguard.targets import TorchTarget

    X = np.concatenate([splits.members.X, splits.evaluation.X])
    y = np.concatenate([splits.members.y, splits.evaluation.y])
    module, _ = fit(_spec(splits), X, y, recipe="overfit", seed=0, **REGULARISED)
    return TorchTarget(module, input_shape=splits.input_shape)


@pytest.fixture(scope="module")
def lira_overfit(overfit_target, splits, tmp_path_factory):
    ctx = RunContext(cache_dir=tmp_path_factory.mktemp("refs"))
    attack = attacks.get("membership.lira")(n_models=8, recipe="overfit", train=RECIPE, n_boot=200)
    return attack.run(overfit_target, splits, seed=0, context=ctx), ctx


@pytest.fixture(scope="module")
def loss_overfit(overfit_target, splits):
    return attacks.get("membership.threshold")(statistic="loss", n_boot=200).run(overfit_target, splits)


def test_lira_beats_chance_and_the_loss_threshold_on_an_overfit_mlp(lira_overfit, loss_overfit):
    lira, _ = lira_overfit
    auc = lira.metric("auc")
    assert auc.low is not None and auc.low > 0.55, f"LiRA AUC {auc}"
    assert auc.value > loss_overfit.metric("auc").value + 0.05
    for key in ("tpr_at_fpr_0.01", "tpr_at_fpr_0.001"):
        assert lira.metric(key).value > loss_overfit.metric(key).value, key
    assert lira.metric("tpr_at_fpr_0.01").value >= 0.02


def test_membership_result_has_what_the_report_reads(lira_overfit, splits):
    lira, _ = lira_overfit
    n = len(splits.members) + len(splits.nonmembers)
    for key in ("auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "balanced_accuracy", "advantage"):
        m = lira.metric(key)
        assert m.low is not None and m.low <= m.value <= m.high
    assert lira.arrays["scores"].shape == (n,) and lira.arrays["is_member"].sum() == len(splits.members)
    fpr, tpr = lira.arrays["roc_fpr"], lira.arrays["roc_tpr"]
    assert fpr[0] == 0 and fpr[-1] == 1 and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    rows = lira.tables["risk_ranking"]
    assert len(rows) == 20 and all(r["is_member"] == 1 for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rows[0]["index"] in set(splits.members.indices.tolist())
    assert lira.findings and lira.queries_used == n
    assert lira.to_json()["metrics"]["auc"]["value"] == pytest.approx(lira.metric("auc").value)


def test_reference_models_are_cached_and_reproducible(lira_overfit, overfit_target, splits):
    first, ctx = lira_overfit
    cached = list((ctx.cache_dir / "references").glob("ref-*.pt"))
    assert len(cached) == 8
    # four models are the first four of the eight: all from the cache, and a rerun reproduces exactly
    attack = attacks.get("membership.lira")(n_models=8, recipe="overfit", train=RECIPE, n_boot=200)
    again = attack.run(overfit_target, splits, seed=0, context=ctx)
    np.testing.assert_allclose(again.arrays["scores"], first.arrays["scores"])
    attacks.get("membership.lira")(n_models=4, recipe="overfit", train=RECIPE, n_boot=0).run(
        overfit_target, splits, seed=0, context=ctx
    )
    assert len(list((ctx.cache_dir / "references").glob("ref-*.pt"))) == 8


def test_a_careful_model_leaks_less(careful_target, lira_overfit, splits):
    lira, _ = lira_overfit
    careful = attacks.get("membership.lira")(n_models=8, recipe="overfit", train=REGULARISED, n_boot=200).run(
        careful_target, splits, seed=0
    )
    assert careful.metric("auc").value < lira.metric("auc").value - 0.05
    assert careful.metric("advantage").value < lira.metric("advantage").value


def test_offline_lira_rmia_shadow_and_label_only_run_on_the_overfit_mlp(
    overfit_target, splits, small_overfit_target, small_splits
):
    kw = {"recipe": "overfit", "train": RECIPE, "n_boot": 100}
    offline = attacks.get("membership.lira")(n_models=4, mode="offline", **kw).run(overfit_target, splits)
    rmia = attacks.get("membership.rmia")(n_models=2, **kw).run(overfit_target, splits)
    assert offline.metric("auc").low > 0.5 and rmia.metric("auc").low > 0.5
    assert rmia.info["calibration_records"] > 0
    # the weaker attackers on the model that leaks more: both must beat chance (measured: shadow
    # AUC 0.68 [0.63, 0.74], label-only 0.62 [0.58, 0.67])
    target, s = small_overfit_target, small_splits
    shadow = attacks.get("membership.shadow")(n_models=2, attack_model="global", **kw).run(target, s, seed=0)
    label = attacks.get("membership.label_only")(
        queries_per_record=16, noise=0.15, max_shift=0, n_boot=100
    ).run(policies.LabelOnly().wrap(target), s, seed=0)
    n = len(s.members) + len(s.nonmembers)
    for r in (shadow, label):
        assert r.arrays["scores"].shape == (n,) and r.metric("auc").low > 0.5, r.metric("auc")
    assert label.access == "LABEL" and label.queries_used == 17 * (n + len(s.public))
    # every reference-model attack states its models the same way (the report reads these keys)
    for r, m, pub in ((offline, 4, splits.public), (rmia, 2, None), (shadow, 2, s.public)):
        info = r.info
        assert info["reference_models"] == m and info["reference_recipe"] == "overfit", info
        assert info["reference_spec"]["arch"] == "mlp" and info["reference_train_size"] > 0
        if pub is not None:  # offline LiRA and shadow train on random halves of the public split
            assert info["reference_train_size"] == len(pub) // 2


def test_threshold_is_tie_safe_on_rounded_scores(overfit_target, splits):
    """Rounded to one decimal, most public records score a confidence of exactly 1.0: a quantile
    threshold with ``>=`` would flag 74% of them at a 5% target; the threshold must step above the tie."""
    from invguard.attacks.membership.common import calibrated_threshold, statistic

    rounded = policies.Round(1).wrap(overfit_target)
    population = statistic(rounded.predict(splits.public.X), splits.public.y, "confidence")
    naive = np.quantile(population, 0.95, method="higher")
    assert np.mean(population >= naive) > 0.5  # the tie the old rule fell into
    r = attacks.get("membership.threshold")(statistic="confidence", decision_fpr=0.05, n_boot=0).run(
        rounded, splits
    )
    t = r.info["decision_threshold"]
    assert np.mean(population >= t) <= 0.05 and r.info["population_fpr"] <= 0.05
    assert t > 1.0  # nothing below the tie group of 1.0 keeps to 5%, so nothing is flagged
    # without ties the threshold is the lowest that keeps to the rate
    assert calibrated_threshold(np.arange(100.0), 0.05) == 95.0
    assert calibrated_threshold(np.array([0.0] * 90 + [1.0] * 10), 0.05) == np.nextafter(1.0, 2.0)
    assert calibrated_threshold(np.array([0.0] * 96 + [1.0] * 4), 0.05) == 1.0


SCORE_BASED = [
    n
    for n in attacks.ATTACKS.names()
    if attacks.ATTACKS.get(n).family() == "membership" and attacks.ATTACKS.get(n).requires >= Access.SCORES
]


def test_the_score_based_membership_attacks_are_the_registered_ones():
    assert {"membership.threshold", "membership.lira", "membership.rmia", "membership.shadow"} <= set(
        SCORE_BASED
    )


@pytest.mark.parametrize("name", SCORE_BASED)
def test_score_based_attacks_refuse_a_label_only_target(name, overfit_target, splits):
    target = policies.LabelOnly().wrap(overfit_target)
    before = target.queries_used
    with pytest.raises(AccessError, match=rf"{name} needs SCORES; this target grants LABEL \(label only\)"):
        attacks.get(name)().run(target, splits)
    assert target.queries_used == before


def test_bad_parameters_and_data_are_refused(overfit_target):
    with pytest.raises(ConfigError, match=r"statistic must be one of .*got 'hinge'"):
        attacks.get("membership.threshold")(statistic="hinge")
    with pytest.raises(
        ConfigError,
        match=r"n_models must be a whole number >= 2, got 1; mode must be one of 'online', 'offline'",
    ):
        attacks.get("membership.lira")(n_models=1, mode="both")
    with pytest.raises(
        ConfigError, match=r"^membership\.threshold: data must be the splits of a dataset .*, got ndarray$"
    ):
        attacks.get("membership.threshold")().run(overfit_target, np.zeros((3, 64)))


def test_reference_architecture_is_required_for_a_foreign_model(splits):
    from invguard.targets import CallableTarget

    w = np.random.default_rng(0).normal(size=(64, 10))
    t = CallableTarget(
        lambda x: x.reshape(len(x), -1) @ w, input_shape=(1, 8, 8), num_classes=10, outputs="logits"
    )
    with pytest.raises(
        ConfigError, match=r"membership.lira: reference models need an architecture: give arch="
    ):
        attacks.get("membership.lira")(n_models=2).run(t, splits)


def test_logit_confidence_is_stable_and_matches_its_definition():
    from invguard.attacks.membership.common import logit_confidence
    from invguard.core import Access, Prediction

    logits = np.array([[50.0, 0.0, -3.0], [0.2, 0.1, 0.0]])
    y = np.array([0, 2])
    phi = logit_confidence(Prediction.from_logits(logits, Access.LOGITS), y)
    p = np.exp(logits[1]) / np.exp(logits[1]).sum()
    assert phi[0] == pytest.approx(50 - np.log(1 + np.exp(-3)))
    assert phi[1] == pytest.approx(np.log(p[2] / (1 - p[2])))
    scores = Prediction.from_logits(logits, Access.SCORES)
    assert np.isfinite(logit_confidence(scores, y)).all()


def test_roc_metrics_on_known_scores():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    m = np.array([1, 1, 0, 1, 0, 0])
    fpr, tpr, thr = mm.roc_curve(s, m)
    assert thr[0] == np.inf and thr[-1] == 0.4
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert mm.auc(s, m) == pytest.approx(8 / 9)
    assert mm.tpr_at_fpr(s, m, 0.01) == pytest.approx(2 / 3)
    assert mm.advantage(s, m) == pytest.approx(2 / 3)
    assert mm.balanced_accuracy(s, m, threshold=0.55) == pytest.approx(5 / 6)
    assert mm.auc(np.ones(6), m) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs members and non-members"):
        mm.roc_curve(s, np.ones(6))
    rows = mm.risk_ranking(s, m, np.arange(10, 16), np.zeros(6), top=2)
    assert [r["index"] for r in rows] == [10, 11] and rows[0]["percentile"] == 1.0


def test_lira_variants_reuse_the_cached_reference_models(lira_overfit, overfit_target, splits):
    _, ctx = lira_overfit
    kw = {"n_models": 8, "recipe": "overfit", "train": RECIPE, "n_boot": 100}
    n = len(splits.members) + len(splits.nonmembers)
    per_example = attacks.get("membership.lira")(variance="per_example", **kw).run(
        overfit_target, splits, context=ctx
    )
    shifted = attacks.get("membership.lira")(augment="shift", **kw).run(overfit_target, splits, context=ctx)
    rounded = attacks.get("membership.lira")(**kw).run(
        policies.Round(2).wrap(overfit_target), splits, context=ctx
    )
    assert len(list((ctx.cache_dir / "references").glob("ref-*.pt"))) == 8  # nothing retrained
    assert per_example.info["fixed_variance"] is False and shifted.queries_used == 5 * n
    for r in (per_example, shifted, rounded):
        assert np.isfinite(r.arrays["scores"]).all() and r.metric("auc").low > 0.5


def test_threshold_decision_is_calibrated_on_population_data(overfit_target, splits):
    r = attacks.get("membership.threshold")(statistic="loss", decision_fpr=0.1, n_boot=0).run(
        overfit_target, splits
    )
    s, m = r.arrays["scores"], r.arrays["is_member"].astype(bool)
    fpr = np.mean(s[~m] >= r.info["decision_threshold"])
    assert 0.03 < fpr < 0.2, fpr  # held-out non-members see about the calibrated rate
    assert r.queries_used == len(m) + len(splits.public)


def test_reference_training_through_a_process_pool_matches_in_process(splits):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from invguard.attacks.membership.common import ReferenceJob, ReferenceSpec, train_reference

    spec = ReferenceSpec(_spec(splits), "quick", {"epochs": 3})
    X, y = splits.public.X, splits.public.y
    jobs = [ReferenceJob(spec, s, X, y, np.arange(s, len(y), 2), X[:5, None]) for s in (0, 1)]
    local = [train_reference(j) for j in jobs]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = RunContext(executor=pool).map(train_reference, jobs)
    for a, b in zip(local, remote, strict=True):
        assert a.shape == (5, 1, 10)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
