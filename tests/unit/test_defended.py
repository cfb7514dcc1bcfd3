"""Defended training: DP-SGD through Opacus with its accounting in the model file, regularisers,
and the named error for layers DP-SGD cannot train."""

import math

import pytest
import torch
from torch import nn

from invguard import models
from invguard.core.errors import ConfigError
from invguard.models.defended import Defence, check_dp_compatible, describe_privacy, fit_defended


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread (and a shared machine is not oversubscribed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spec(digits):
    return {"arch": "mlp", "hidden": [32], "input_shape": list(digits.input_shape), "num_classes": 10}


def test_dp_model_metadata_carries_its_accounting(digits, spec, tmp_path):
    d = Defence(epsilon=2.0, delta=1e-4, epochs=2, batch_size=128, lr=3e-3, accountant="prv")
    module, rep = fit_defended(spec, digits.members.X, digits.members.y, d, seed=0)
    p = rep.privacy
    assert p["accountant"] == "prv" and p["delta"] == 1e-4 and p["poisson_sampling"] is True
    assert 0 < p["epsilon"] <= 2.0 + 1e-6 and p["noise_multiplier"] > 0.3
    assert p["sample_rate"] == 1 / math.ceil(len(digits.members) / 128)  # one expected batch of 128
    assert p["steps"] == 2 * round(1 / p["sample_rate"])
    path = models.save(module, tmp_path / "dp.pt", meta=rep.meta())
    loaded = models.load(path)
    assert loaded.invguard_meta["privacy"] == p and loaded.invguard_meta["defence"]["epsilon"] == 2.0
    assert "(epsilon 2, delta 0.0001)-DP by the PRV accountant" in describe_privacy(p).replace("2.0", "2")
    # the module is a plain module again: no Opacus hooks or per-sample gradients left behind
    assert not any(hasattr(q, "grad_sample") and q.grad_sample is not None for q in loaded.parameters())
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_same_seed_same_dp_weights(digits, spec):
    d = Defence(epsilon=4.0, epochs=2, batch_size=128, lr=3e-3)
    a, _ = fit_defended(spec, digits.members.X, digits.members.y, d, seed=1)
    b, _ = fit_defended(spec, digits.members.X, digits.members.y, d, seed=1)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_regularisers_and_early_stopping(digits, spec):
    d = Defence(weight_decay=1e-3, label_smoothing=0.1, augment="shift", early_stopping=2, epochs=12, lr=1e-2)
    _, rep = fit_defended(spec, digits.members.X, digits.members.y, d)
    assert rep.privacy is None and rep.holdout_accuracy is not None and rep.holdout_accuracy > 0.7
    assert rep.epochs <= rep.epochs_planned == 12
    assert describe_privacy(None).startswith("trained without differential privacy")


def test_unsupported_layers_are_named(digits):
    spec = {"arch": "cnn", "norm": "batch", "input_shape": [1, 8, 8], "num_classes": 10}
    with pytest.raises(
        ConfigError, match=r"layer 'features\.1' \(BatchNorm2d\) mixes the samples.*norm='group'"
    ):
        fit_defended(spec, digits.members.X, digits.members.y, Defence(epsilon=1.0, epochs=1))

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(64))

        def forward(self, x):
            return x.flatten(1) * self.w

    with pytest.raises(ConfigError, match=r"layer '0' \(Scale\) has trainable parameters but Opacus has no"):
        check_dp_compatible(nn.Sequential(Scale(), nn.Linear(64, 10)))
    check_dp_compatible(models.build({**spec, "norm": "group"}))  # GroupNorm is fine


def test_defence_validation_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        Defence(epsilon=-1, accountant="moments", label_smoothing=1.5)
    msg = str(e.value)
    assert "epsilon must be > 0" in msg and "accountant must be one of ['rdp', 'prv']" in msg
    assert "label_smoothing must be in [0, 1)" in msg
    assert Defence.parse("epsilon=inf weight_decay=0.001").private is False
    assert Defence.parse("epsilon=4 accountant=prv poisson=false").poisson is False
    with pytest.raises(ConfigError, match=r"--defence: unknown keys \['noise'\]"):
        Defence.parse("noise=1")


def test_augmentation_shifts_and_mirrors_each_image():
    from invguard.models.defended import _augment

    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 2] = 1.0
    out = _augment(x, "flip_shift", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1.0)  # one pixel moved, none lost
    rows, cols = out[:, 0].nonzero(as_tuple=True)[1:]
    assert set(rows.tolist()) <= {2, 3, 4} and set(cols.tolist()) <= {1, 2, 3, 4, 5, 6}
    assert (cols >= 4).any()  # some were mirrored
