import numpy as np
import pytest
import torch

from invguard import models
from invguard.core import ConfigError
from invguard.models.train import fit


def test_training_is_deterministic(digits):
    spec = {"arch": "mlp", "hidden": [32], "input_shape": [1, 8, 8], "num_classes": 10}
    a, ra = fit(spec, digits.members.X, digits.members.y, recipe="quick", seed=3, epochs=3)
    b, rb = fit(spec, digits.members.X, digits.members.y, recipe="quick", seed=3, epochs=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert ra == rb


def test_cnn_and_mlp_learn_digits(digits, digits_mlp):
    assert models.accuracy(digits_mlp, digits.nonmembers.X, digits.nonmembers.y) > 0.85
    spec = {"arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 10}
    cnn, _ = fit(spec, digits.members.X, digits.members.y, recipe="quick", seed=0, epochs=10)
    assert models.accuracy(cnn, digits.nonmembers.X, digits.nonmembers.y) > 0.85


def test_overfit_recipe_memorises(digits):
    spec = {"arch": "mlp", "hidden": [128], "input_shape": [1, 8, 8], "num_classes": 10}
    m, rep = fit(spec, digits.members.X[:200], digits.members.y[:200], recipe="overfit", seed=0, epochs=80)
    assert rep.train_accuracy == 1.0
    assert models.accuracy(m, digits.nonmembers.X, digits.nonmembers.y) < rep.train_accuracy


def test_save_load_round_trip(tmp_path, digits_mlp, digits):
    p = models.save(digits_mlp, tmp_path / "m.pt", meta={"x": 1})
    back = models.load(p)
    x = torch.as_tensor(digits.members.X[:5])
    assert torch.allclose(back(x), digits_mlp(x))
    assert back.invguard_meta["x"] == 1 and back.invguard_meta["torch"] == str(torch.__version__)


def test_bad_specs_and_training_inputs(tmp_path, digits_mlp):
    with pytest.raises(
        ConfigError, match=r"cnn needs images of shape \(channels, height, width\), got input_shape"
    ):
        models.build({"arch": "cnn", "input_shape": [14], "num_classes": 2})
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 10\) for a model with 10 outputs"):
        models.train.train(digits_mlp, np.zeros((2, 1, 8, 8), np.float32), np.array([0, 12]), recipe="quick")
    with pytest.raises(ConfigError, match="training needs epochs >= 1, batch_size >= 1"):
        models.train.train(digits_mlp, np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1]), batch_size=0)
    with pytest.raises(ConfigError, match="is a folder; give a file path for the model"):
        models.save(digits_mlp, tmp_path)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.pt: model file not found"):
        models.load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"junk\.pt: not an invguard model file"):
        models.load(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="unknown reference model 'resnet'"):
        models.load("reference/resnet")
    with pytest.raises(ConfigError, match="unknown architecture 'vit'"):
        models.build({"arch": "vit", "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(ConfigError, match="unknown training recipe 'fast'"):
        fit(
            {"arch": "mlp", "input_shape": [4], "num_classes": 2},
            np.zeros((4, 4)),
            np.array([0, 1, 0, 1]),
            recipe="fast",
        )


def test_reference_model_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INVGUARD_CACHE", str(tmp_path))
    m1, splits = models.reference("digits-mlp", seed=0)
    files = list(tmp_path.glob("digits-mlp-*.pt"))
    assert len(files) == 1

    def no_training(*a, **k):
        raise AssertionError("a cached reference model was retrained")

    import sys

    monkeypatch.setattr(sys.modules["invguard.models.train"], "fit", no_training)
    m2 = models.load("reference/digits-mlp")
    x = torch.as_tensor(splits.members.X[:3])
    assert torch.equal(m1(x), m2(x))
    assert models.accuracy(m1, splits.nonmembers.X, splits.nonmembers.y) > 0.9
