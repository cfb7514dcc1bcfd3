"""The one-run audit (Steinke, Nasr & Jagielski 2023) refutes a broken DP training's claim and
finds no violation in a working one."""

import numpy as np
import pytest
import torch

from invguard.defences.one_run import (
    canary_scores,
    judge_one_run,
    make_canaries,
    module_logits,
    one_run_audit,
    with_canaries,
)
from invguard.models.defended import Defence, noise_multiplier


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread (and a shared machine is not oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SPEC = {"arch": "mlp", "hidden": [128], "input_shape": [1, 8, 8], "num_classes": 10}


def broken_dp_training(X, y, *, epsilon, seed=0, epochs=40, batch_size=64, lr=3e-3, clip=1.0):
    """DP-SGD whose noise is off (a classic bug): clipping and Poisson sampling happen, and the
    accountant reports the epsilon the noise multiplier it was calibrated with would give."""
    from opacus import PrivacyEngine

    from invguard.models import build

    torch.manual_seed(seed)
    module = build(SPEC)
    data = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    delta = 1 / (10 * len(y))
    sigma = noise_multiplier(epsilon, delta, 1 / len(loader), epochs, "rdp")
    engine = PrivacyEngine()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    dp_module, opt, loader = engine.make_private(
        module=module, optimizer=opt, data_loader=loader, noise_multiplier=sigma, max_grad_norm=clip
    )

    def add_no_noise():  # the bug: clipped gradients go out unnoised; the accountant does not know
        for p in opt.params:
            p.grad = p.summed_grad.view_as(p)

    opt.add_noise = add_no_noise
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(dp_module(xb), yb).backward()
                opt.step()
    claimed = {"epsilon": engine.accountant.get_epsilon(delta), "delta": delta}
    dp_module.remove_hooks()
    return module.eval(), claimed


def test_a_dp_training_with_its_noise_off_exceeds_its_claim(digits):
    can = make_canaries(digits, 300, seed=0)
    X, y = with_canaries(digits.members.X, digits.members.y, can)
    module, claimed = broken_dp_training(X, y, epsilon=1.0, lr=1e-2, clip=5.0)
    assert 0.8 < claimed["epsilon"] <= 1.0
    audit = judge_one_run(canary_scores(module_logits(module), can), can, claimed, n_boot=50)
    one = audit["metrics"]["epsilon_one_run"]
    assert audit["claim_refuted"] and one["value"] > 1.0
    assert audit["findings"][0]["title"] == "The differential-privacy claim does not hold"
    assert audit["findings"][0]["severity"] == "critical"


def test_working_dp_training_is_consistent_with_its_claim(digits):
    d = Defence(epsilon=1.0, epochs=10, batch_size=128, lr=3e-3)
    _, rep, audit = one_run_audit(SPEC, digits, d, canaries=300, n_boot=50)
    assert not audit["claim_refuted"] and audit["accountant_epsilon"] == rep.privacy["epsilon"]
    assert audit["metrics"]["epsilon_one_run"]["high"] < rep.privacy["epsilon"]  # soundness, whole range
    assert audit["findings"][0]["title"] == "Consistent with the DP claim"


def test_canaries_are_mislabelled_public_records_included_at_random(digits):
    can = make_canaries(digits, 300, seed=0)
    src = {int(i): k for k, i in enumerate(digits.public.indices)}
    true = np.array([digits.public.y[src[int(i)]] for i in can.source])
    assert np.all(can.y != true) and 0.4 < can.included.mean() < 0.6
    assert not set(can.source) & set(digits.members.indices.tolist())
    with pytest.raises(
        Exception, match=r"400 mislabelled canaries need 400 public records; the public split has 359"
    ):
        make_canaries(digits, 400)
    ood = make_canaries(digits, 400, kind="ood")
    assert len(ood) == 400 and (ood.source == -1).all()
