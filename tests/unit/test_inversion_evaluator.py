"""The robust evaluation classifier of the inversion metrics.

On 8x8 digits it must classify clean held-out digits and the public class means, and credit a class
only when its members agree. On 28x28 MNIST-5k it must not credit noise crafted to make a CNN
confident in a class (faint strokes from a black start, as ART's MIFace makes them), which the
earlier plainly trained evaluator credited. (On 8x8 digits such images are not noise: a few
gradient steps on 64 pixels draw a faint digit, which a robust classifier rightly recognises, so
the noise test needs the larger images.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invguard.models.evaluator import _shift_augment, build_evaluator, evaluator_spec
from invguard.models.train import fit

PER_CLASS = 3
EPOCHS = 15  # of the MNIST evaluator (30 in the attacks): enough for the test, half the time


@pytest.fixture(scope="module")
def robust(digits, tmp_path_factory):
    return build_evaluator(digits, target_arch="mlp", cache_dir=tmp_path_factory.mktemp("evaluator"))


def classes():
    return np.repeat(np.arange(10), PER_CLASS)


def test_robust_evaluator_classifies_clean_held_out_digits(robust, digits):
    assert robust.arch == "cnn+mlp"  # the member of another family than the MLP target comes first
    assert robust.spec["adversarial"] == {"norm": "linf", "eps": 0.15, "steps": 3}
    assert 0.9 <= robust.holdout_accuracy <= 1.0
    assert np.mean(robust.predict(digits.nonmembers.X) == digits.nonmembers.y) == robust.holdout_accuracy


def test_public_class_means_are_recognised(robust, digits):
    pub = digits.public
    means = np.stack([pub.X[pub.y == c].mean(axis=0) for c in range(10)])
    assert np.mean(robust.predict(means) == np.arange(10)) >= 0.9


def test_members_must_agree_to_credit_a_class(robust, digits):
    X = digits.nonmembers.X
    labels = np.stack([z.argmax(axis=1) for z in robust.member_logits(X)])
    pred = robust.predict(X)
    agree = labels[0] == labels[1]
    assert (~agree).any()  # the members do differ on some held-out digits
    assert np.all(pred[~agree] == -1) and np.all(pred[agree] == labels[0][agree])
    # top-1 credit implies top-1 of the averaged log-probabilities (top-5 contains top-1)
    assert np.all(robust.logits(X).argmax(axis=1)[agree] == pred[agree])


def targeted_noise(module, y, shape, steps=300):
    """Targeted gradient ascent on ``module``'s class probability from a black image, kept in the
    [0, 1] box (the white-box inversion of Fredrikson et al. 2015 without any image prior)."""
    x = torch.zeros((len(y), *shape), requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.01)
    yt = torch.as_tensor(y, dtype=torch.long)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x), yt).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach().numpy().astype(np.float64)


@pytest.mark.slow
def test_noise_that_fools_a_cnn_is_not_credited_on_mnist(tmp_path_factory):
    from invguard import data

    mnist = data.load("mnist5k", seed=0)
    shape = tuple(mnist.input_shape)
    # the attacker's model: a CNN of the reference architecture trained on the public split
    cnn = {"arch": "cnn", "input_shape": list(shape), "num_classes": 10}
    surrogate, _ = fit(cnn, mnist.public.X, mnist.public.y, recipe="quick", seed=0)
    y = classes()
    noise = targeted_noise(surrogate, y, shape)
    with torch.no_grad():
        fooled = surrogate(torch.as_tensor(noise, dtype=torch.float32)).argmax(1).numpy() == y
    assert fooled.mean() >= 0.9  # the CNN is convinced
    assert noise.mean() < 0.1  # faint strokes on black, nothing a person reads as a digit
    # the earlier evaluator for a CNN target: the two-layer MLP, shift-augmented, plainly trained
    X, yy = _shift_augment(mnist.evaluation.X, mnist.evaluation.y, np.random.default_rng(0))
    mlp = evaluator_spec(shape, 10, "cnn")["members"][0]
    plain = fit(mlp, X.astype(np.float32), yy, recipe="standard", seed=0, epochs=30, batch_size=128, lr=2e-3)[
        0
    ]
    with torch.no_grad():
        credited = plain(torch.as_tensor(noise, dtype=torch.float32)).argmax(1).numpy() == y
    assert credited.mean() >= 0.5
    robust = build_evaluator(
        mnist, target_arch="cnn", cache_dir=tmp_path_factory.mktemp("mnist-evaluator"), epochs=EPOCHS
    )
    assert robust.arch == "mlp+cnn" and robust.spec["adversarial"]["eps"] == 0.2
    assert robust.holdout_accuracy >= 0.85
    assert np.mean(robust.predict(noise) == y) <= 0.3
