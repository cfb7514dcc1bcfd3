"""Turn the config's target and data sections into things a job can carry to any worker.

A :class:`ResolvedTarget` holds the model as bytes (a saved torch model, a state dict, a pickle)
plus options, so that a job rebuilds the target inside a local worker process or on a Dask worker
on another machine without sharing a file system. Reference models are trained once by the audit
and cached by content hash (architecture, recipe, seed and the hashes of the data splits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from invguard.audit.config import DataConfig, TargetConfig
from invguard.core.errors import ConfigError, DataError
from invguard.storage import atomic_write

BUNDLED = ("digits", "mnist5k", "adult")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


class Secret(str):
    """A credential carried to the workers: its repr never shows it."""

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True)
class ResolvedTarget:
    """A target in portable form; ``build()`` makes the live :class:`~invguard.core.target.Target`."""

    kind: str  # "torch-file", "torch-factory", "sklearn", "http", "onnx", "hf_lm", "openai"
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    payload: bytes | None = None
    options: dict[str, Any] = field(default_factory=dict)
    access: str | None = None

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.kind.encode())
        h.update(self.payload or b"")
        public = {k: v for k, v in self.options.items() if k != "api_key"}
        h.update(json.dumps(public, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    @property
    def is_text(self) -> bool:
        return self.kind in ("hf_lm", "openai")

    def build(self) -> Any:
        if self.is_text:
            from invguard.audit.text import build_lm_target

            return build_lm_target(self)
        if self.kind == "onnx":
            from invguard.targets.onnx import OnnxTarget

            return OnnxTarget(
                self.payload or b"",
                input_shape=self.input_shape,
                num_classes=self.num_classes,
                access=self.access,
                budget=self.options.get("budget"),
                name=self.name,
            )
        if self.kind == "http":
            from invguard.targets import HttpTarget

            return HttpTarget(
                input_shape=self.input_shape, num_classes=self.num_classes, name=self.name, **self.options
            )
        if self.kind == "sklearn":
            import joblib

            est = joblib.load(io.BytesIO(self.payload or b""))
            from invguard.targets import SklearnTarget

            t: Any = SklearnTarget(
                est, input_shape=self.input_shape, budget=self.options.get("budget"), name=self.name
            )
            return _lower(t, self.access)
        import torch

        from invguard.targets import TorchTarget

        if self.kind in ("torch-file", "federated"):
            from invguard.models.nets import build

            blob = torch.load(io.BytesIO(self.payload or b""), map_location="cpu", weights_only=True)
            module = build(blob["spec"])
            module.load_state_dict(blob["state_dict"])
        else:
            module = _factory(self.options["factory"])(**self.options.get("factory_kwargs", {}))
            state = torch.load(io.BytesIO(self.payload or b""), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        module.eval()
        if self.kind == "federated":
            return _federated(module, self)
        return TorchTarget(
            module,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            access=self.access or "whitebox",
            budget=self.options.get("budget"),
            name=self.name,
        )


def _federated(module: Any, rt: ResolvedTarget) -> Any:
    """A federated target: the module (or, for ``snapshot: init``, the same architecture freshly
    initialised from the audit seed) in the configured deployment."""
    import torch

    from invguard.audit.config import FederatedConfig
    from invguard.federated.target import FederatedTarget

    opts = dict(rt.options["federated"])
    seed = int(opts.pop("seed", 0))
    fc = FederatedConfig(**opts)
    if fc.snapshot == "init":
        from invguard.models.nets import build, spec_of

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build(spec_of(module)).eval()
    return FederatedTarget(
        module,
        input_shape=rt.input_shape,
        num_classes=rt.num_classes,
        setup=fc.setup(),
        budget=rt.options.get("budget"),
        name=rt.name,
    )


def _lower(target: Any, access: str | None) -> Any:
    """Lower a non-torch target's access with the matching output policy."""
    from invguard import policies
    from invguard.core.access import Access

    if access is None or Access.parse(access) >= target.access:
        return target
    return (policies.LabelOnly() if Access.parse(access) == Access.LABEL else policies.ScoresOnly()).wrap(
        target
    )


def _factory(spec: str) -> Callable[..., Any]:
    mod, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"target.factory: cannot import module {mod!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"target.factory: module {mod!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"target.factory: {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: file not found: {p}")
    return p.read_bytes()


def resolve_target(
    cfg: TargetConfig,
    splits: Any,
    *,
    seed: int,
    cache_dir: Path | None,
    progress: Callable[[int, int, float], None] | None = None,
) -> ResolvedTarget:
    """Train (or load from the cache) / read the model the config names, in portable form."""
    if cfg.is_text:
        from invguard.audit.text import resolve_lm_target

        lm: ResolvedTarget = resolve_lm_target(cfg, splits, seed=seed, cache_dir=cache_dir, progress=progress)
        return lm
    if cfg.kind == "federated":
        assert cfg.federated is not None
        base = resolve_target(
            cfg.model_copy(update={"kind": "model", "federated": None}),
            splits,
            seed=seed,
            cache_dir=cache_dir,
            progress=progress,
        )
        fed = {**cfg.federated.model_dump(mode="json"), "seed": seed}
        return dataclasses.replace(base, kind="federated", options={**base.options, "federated": fed})
    shape = tuple(cfg.input_shape) if cfg.input_shape else tuple(splits.input_shape)
    classes = int(cfg.num_classes or splits.num_classes)
    name = cfg.display_name
    if cfg.kind == "http":
        opts: dict[str, Any] = {
            "url": cfg.url,
            "preset": cfg.preset,
            "returns": cfg.returns,
            "budget": cfg.budget,
            "api_key_env": cfg.api_key_env,
            "api_key_header": cfg.api_key_header,
            "request_template": cfg.request_template,
            "response_field": cfg.response_field,
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "max_wait": cfg.max_wait,
        }
        if cfg.api_key_env:
            if cfg.api_key_env not in os.environ:
                raise ConfigError(f"target.api_key_env: environment variable {cfg.api_key_env} is not set")
            # read once here: workers (a forkserver started earlier, Dask workers on other hosts)
            # need not have the variable; never printed (Secret) nor part of the digest
            opts["api_key"], opts["api_key_env"] = Secret(os.environ[cfg.api_key_env]), None
        return ResolvedTarget("http", name, shape, classes, None, opts, None)
    if cfg.kind == "onnx":
        assert cfg.path is not None
        return ResolvedTarget(
            "onnx", name, shape, classes, _read(cfg.path, "target.path"), {"budget": cfg.budget}, cfg.access
        )
    if cfg.kind == "sklearn":
        assert cfg.model is not None
        return ResolvedTarget(
            "sklearn",
            name,
            shape,
            classes,
            _read(cfg.model, "target.model"),
            {"budget": cfg.budget},
            cfg.access,
        )
    if cfg.kind == "torch":
        assert cfg.factory is not None and cfg.weights is not None
        _factory(cfg.factory)  # fail early, in the main process, with a config error
        return ResolvedTarget(
            "torch-factory",
            name,
            shape,
            classes,
            _read(cfg.weights, "target.weights"),
            {"factory": cfg.factory, "factory_kwargs": cfg.factory_kwargs, "budget": cfg.budget},
            cfg.access,
        )
    assert cfg.model is not None
    if cfg.model.startswith("reference/"):
        payload = _reference_bytes(
            cfg.model.split("/", 1)[1],
            splits,
            seed=seed,
            cache_dir=cache_dir,
            progress=progress,
            defence=cfg.defence,
        )
    else:
        payload = _read(cfg.model, "target.model")
        import torch

        try:
            blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a foreign file
            raise ConfigError(
                f"target.model: {cfg.model} is not an invguard model file ({type(e).__name__})"
            ) from None
        if not isinstance(blob, dict) or "spec" not in blob:
            raise ConfigError(
                f"target.model: {cfg.model} is not an invguard model file (written by `invguard train`)"
            )
    options: dict[str, Any] = {"budget": cfg.budget}
    meta = _model_meta(payload)
    if meta.get("defence") is not None:  # what the model's training spent, for every report about it
        options["privacy"] = meta.get("privacy")
        options["defence"] = meta["defence"]
    return ResolvedTarget("torch-file", name, shape, classes, payload, options, cfg.access)


def _model_meta(payload: bytes) -> dict[str, Any]:
    import torch

    blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
    return dict(meta) if isinstance(meta, dict) else {}


def _reference_bytes(
    ref: str,
    splits: Any,
    *,
    seed: int,
    cache_dir: Path | None,
    progress: Any,
    defence: dict[str, Any] | None = None,
) -> bytes:
    """A named reference model trained on the audit's members split, cached by content hash;
    with ``defence``, trained defended (:mod:`invguard.models.defended`, the reference's recipe
    unless the defence names one)."""
    from invguard.models.store import REFERENCES

    if ref not in REFERENCES:
        raise ConfigError(f"target.model: unknown reference model {ref!r}; known: {sorted(REFERENCES)}")
    spec_ref = REFERENCES[ref]
    if spec_ref["dataset"] != splits.dataset.name:
        raise ConfigError(
            f"target.model: reference/{ref} is trained on {spec_ref['dataset']!r} but data.dataset is "
            f"{splits.dataset.name!r}; set data.dataset: {spec_ref['dataset']}"
        )
    import torch

    from invguard.models.train import RECIPES

    spec = {**spec_ref["arch"], "input_shape": list(splits.input_shape), "num_classes": splits.num_classes}
    keyed: dict[str, Any] = {
        "spec": spec,
        "recipe": RECIPES[spec_ref["recipe"]],
        "seed": seed,
        "data": splits.provenance(),
        "torch": torch.__version__,
    }
    if defence is not None:
        keyed["defence"] = defence
    key = _sha(json.dumps(keyed, sort_keys=True, default=str).encode())
    path = None if cache_dir is None else Path(cache_dir) / "models" / f"{ref}-{key}.pt"
    if path is not None and path.is_file():
        return path.read_bytes()
    from invguard.models.nets import spec_of
    from invguard.models.train import fit

    meta: dict[str, Any] = {"reference": ref, "seed": seed}
    if defence is not None:
        from invguard.models.defended import Defence, fit_defended

        d = Defence.from_dict({"recipe": spec_ref["recipe"], **defence}, "target.defence")
        module, drep = fit_defended(spec, splits.members.X, splits.members.y, d, seed=seed, progress=progress)
        meta.update(drep.meta())
    else:
        module, report = fit(
            spec, splits.members.X, splits.members.y, recipe=spec_ref["recipe"], seed=seed, progress=progress
        )
        meta["train_accuracy"] = report.train_accuracy

    buf = io.BytesIO()
    torch.save(
        {
            "format": "invguard-model/1",
            "spec": spec_of(module),
            "state_dict": module.state_dict(),
            "meta": meta,
        },
        buf,
    )
    data = buf.getvalue()
    if path is not None:
        atomic_write(path, data)
    return data


# ---------------------------------------------------------------------------- data
def resolve_data(cfg: DataConfig, *, seed: int, target: TargetConfig | None = None) -> Any:
    """The audit's splits: bundled/user data split by seed, or the user's own members; for a
    language-model ``target``, the text splits (:func:`invguard.audit.text.resolve_text_data`)."""
    from invguard import data as ig_data

    if target is not None and target.is_text:
        from invguard.audit.text import resolve_text_data

        return resolve_text_data(cfg.text, target, seed=seed)

    kw: dict[str, Any] = {"label": cfg.label} if cfg.label else {}
    s = cfg.seed if cfg.seed is not None else seed
    if cfg.members is None:
        return ig_data.load(
            cfg.dataset,
            seed=s,
            fractions=cfg.fractions,
            public_classes=cfg.public_classes,
            limit=cfg.limit,
            **kw,
        )
    ds = ig_data.load_dataset(cfg.dataset, **kw)
    if cfg.members.file is not None:
        mds = ig_data.load_dataset(cfg.members.file, **kw)
        if mds.input_shape != ds.input_shape:
            raise DataError(
                f"data.members.file: records of shape {mds.input_shape}, "
                f"but data.dataset has {ds.input_shape}"
            )
        from invguard.data.datasets import Dataset

        ds = Dataset(
            name=ds.name,
            X=np.concatenate([mds.X, ds.X]),
            y=np.concatenate([mds.y, ds.y]),
            kind=ds.kind,
            class_names=ds.class_names if len(ds.class_names) >= len(mds.class_names) else mds.class_names,
            feature_groups=ds.feature_groups,
            categories=ds.categories,
            source=f"{mds.source} + {ds.source}",
        )
        members = np.arange(mds.X.shape[0])
    else:
        members = _read_indices(cfg.members.indices or "", ds.X.shape[0])
    return _splits_with_members(ds, members, seed=s, public_classes=cfg.public_classes)


def _read_indices(path: str, n: int) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.members.indices: file not found: {p}")
    try:
        idx = np.load(p) if p.suffix == ".npy" else np.loadtxt(p, dtype=np.int64, ndmin=1)
    except ValueError as e:
        raise DataError(f"data.members.indices: {p} is not a list of integer row indices ({e})") from None
    idx = np.unique(np.asarray(idx, dtype=np.int64))
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise DataError(f"data.members.indices: {p} has indices outside [0, {n}): {bad[:5].tolist()}")
    if idx.size < 2:
        raise DataError(f"data.members.indices: {p} names {idx.size} members; need at least 2")
    return idx


def _splits_with_members(ds: Any, members: np.ndarray, *, seed: int, public_classes: Any) -> Any:
    """Splits whose members are the given rows; the rest is split 3:2:2 into non-members/public/evaluation."""
    from sklearn.model_selection import train_test_split

    from invguard.data.splits import Split, Splits

    rest = np.setdiff1d(np.arange(ds.y.shape[0]), members)
    if rest.size < 3 * ds.num_classes:
        raise DataError(
            f"data: only {rest.size} non-member records besides the {members.size} members; "
            "need non-members, public and evaluation data too"
        )
    y = ds.y
    try:
        non, rest2 = train_test_split(rest, train_size=3 / 7, stratify=y[rest], random_state=seed)
        pub, ev = train_test_split(rest2, train_size=0.5, stratify=y[rest2], random_state=seed)
    except ValueError:
        non, rest2 = train_test_split(rest, train_size=3 / 7, random_state=seed)
        pub, ev = train_test_split(rest2, train_size=0.5, random_state=seed)

    def mk(name: str, ix: np.ndarray) -> Split:
        ix = np.sort(ix)
        return Split(name, ds.X[ix], ds.y[ix], ix)

    n = ds.y.shape[0]
    fr = {
        "members": members.size / n,
        "nonmembers": non.size / n,
        "public": pub.size / n,
        "evaluation": ev.size / n,
    }
    splits = Splits(
        ds,
        mk("members", members),
        mk("nonmembers", non),
        mk("public", pub),
        mk("evaluation", ev),
        seed,
        None,
        fr,
    )
    return splits.with_public_classes(public_classes) if public_classes is not None else splits
