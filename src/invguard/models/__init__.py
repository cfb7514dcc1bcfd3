"""Small reference architectures, seeded CPU training, save/load and reference models.

>>> from invguard import models
>>> model, splits = models.reference("digits-mlp", seed=0)   # trained on the digits members split
"""

from invguard.models.nets import ARCHITECTURES, build, spec_of
from invguard.models.store import load, reference, save
from invguard.models.train import RECIPES, TrainReport, accuracy, train

__all__ = [
    "ARCHITECTURES",
    "RECIPES",
    "TrainReport",
    "accuracy",
    "build",
    "load",
    "reference",
    "save",
    "spec_of",
    "train",
]
