import numpy as np
import pytest

from invguard import data
from invguard.core import DataError


def test_digits_splits_are_disjoint_deterministic_and_stratified():
    a = data.load("digits", seed=0)
    b = data.load("digits", seed=0)
    c = data.load("digits", seed=1)
    idx = [a.split(n).indices for n in ("members", "nonmembers", "public", "evaluation")]
    allidx = np.concatenate(idx)
    assert len(allidx) == len(set(allidx.tolist())) == 1797
    assert a.provenance() == b.provenance()
    assert a.members.hash != c.members.hash
    assert a.members.X.shape[1:] == (1, 8, 8) and a.members.X.dtype == np.float32
    assert a.members.X.min() >= 0.0 and a.members.X.max() <= 1.0
    for s in ("members", "public", "evaluation"):
        assert set(a.split(s).y.tolist()) == set(range(10))


def test_disjoint_class_setting():
    s = data.load("digits", seed=0, public_classes=[0, 1, 2, 3, 4])
    assert set(s.public.y.tolist()) == {0, 1, 2, 3, 4}
    assert s.private_classes == (5, 6, 7, 8, 9) and s.setting == "disjoint-class"
    assert set(s.evaluation.y.tolist()) == set(range(10))
    with pytest.raises(DataError, match=r"public_classes \[12\] out of range"):
        data.load("digits", seed=0, public_classes=[12])


def test_mnist_and_adult_from_the_data_extra():
    m = data.load_dataset("mnist5k")
    assert m.X.shape == (5000, 1, 28, 28) and m.num_classes == 10
    a = data.load("adult", seed=0, limit=2000)
    assert a.dataset.kind == "tabular" and a.num_classes == 2
    groups = a.dataset.feature_groups
    assert "sex" in groups and len(groups["sex"]) == 2 and a.dataset.categories["sex"] == ["Female", "Male"]
    assert len(a.members) + len(a.nonmembers) + len(a.public) + len(a.evaluation) == 2000


def test_user_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.random((60, 8, 8)), y=np.repeat(np.arange(3), 20))
    d = data.load_dataset(tmp_path / "d.npz")
    assert d.input_shape == (1, 8, 8) and d.kind == "image"
    (tmp_path / "t.csv").write_text("age,colour,label\n30,red,a\n40,blue,b\n50,red,a\n20,blue,b\n")
    t = data.load_dataset(tmp_path / "t.csv", label="label")
    assert t.X.shape == (4, 3) and t.feature_groups == {"age": [0], "colour": [1, 2]}
    from skimage import io

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            io.imsave(
                tmp_path / "imgs" / c / f"{i}.png",
                (rng.random((10, 10)) * 255).astype(np.uint8),
                check_contrast=False,
            )
    f = data.load_dataset(tmp_path / "imgs", size=(8, 8))
    assert f.X.shape == (6, 1, 8, 8) and f.class_names == ("cat", "dog")


def test_bad_inputs_name_what_and_where(tmp_path):
    with pytest.raises(DataError, match=r"missing.npz: file not found"):
        data.load_dataset(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", features=np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"bad.npz: needs arrays 'X' and 'y'; found \['features'\]"):
        data.load_dataset(tmp_path / "bad.npz")
    (tmp_path / "r.csv").write_text("a,b,label\n1,2,x\n1,2\n")
    with pytest.raises(DataError, match=r"r.csv:3: expected 3 fields, got 2"):
        data.load_dataset(tmp_path / "r.csv", label="label")
    with pytest.raises(DataError, match=r"label column 'y' not found"):
        data.load_dataset(tmp_path / "r.csv", label="y")
    with pytest.raises(DataError, match="unknown dataset 'digitz'; did you mean 'digits'"):
        data.load("digitz")
    with pytest.raises(DataError, match="fractions must be > 0 and sum to at most 1"):
        data.load("digits", fractions={"members": 0.5, "nonmembers": 0.5, "public": 0.2, "evaluation": 0.2})


def test_csv_missing_values_numeric_labels_and_bom(tmp_path):
    (tmp_path / "m.csv").write_text("age,colour,label\n30,red,a\n,blue,b\n50,red,a\n")
    with pytest.raises(DataError, match=r"m.csv:3: column 'age' is numeric but has 1 missing value\(s\)"):
        data.load_dataset(tmp_path / "m.csv", label="label")
    (tmp_path / "n.csv").write_bytes("\ufeffx,label\n1,10\n2,2\n3,10\n".encode())
    d = data.load_dataset(tmp_path / "n.csv", label="label")
    assert d.class_names == ("2", "10") and d.y.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="dataset 'digits' takes no options; got \\['label'\\]"):
        data.load_dataset("digits", label="y")


def test_npz_channels_last_nan_and_label_shapes(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", X=(rng.random((12, 8, 8, 3)) * 255).astype(np.uint8), y=np.arange(12) % 2)
    d = data.load_dataset(tmp_path / "c.npz")
    assert d.input_shape == (3, 8, 8) and d.X.max() <= 1.0
    X = rng.random((6, 4))
    X[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"features contain NaN or infinite values \(first at sample 3\)"):
        data.load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "y2.npz", X=rng.random((6, 4)), y=np.zeros((6, 2)))
    with pytest.raises(DataError, match=r"labels must be one per sample, got an array of shape \(6, 2\)"):
        data.load_dataset(tmp_path / "y2.npz")


def test_missing_extra_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("mlxtend"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "mlxtend.data", raising=False)
    monkeypatch.setattr(importlib, "import_module", lambda n: fake(n))
    with pytest.raises(DataError, match=r"pip install 'invguard\[data\]'"):
        data.load_dataset("mnist5k")
