"""Datasets and deterministic, seeded splits.

>>> from invguard import data
>>> splits = data.load("digits", seed=0)
>>> splits.members.X.shape[1:]
(1, 8, 8)
"""

from invguard.data.datasets import DATASETS, Dataset, load_dataset
from invguard.data.splits import Split, Splits, load, make_splits

__all__ = ["DATASETS", "Dataset", "Split", "Splits", "load", "load_dataset", "make_splits"]
