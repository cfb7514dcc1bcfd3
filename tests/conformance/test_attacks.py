"""Every registered attack runs through one contract, at its declared ``fast_params``.

- refused below its access with no query spent;
- seeded runs are identical;
- a budget is never exceeded: on the model shipped to a device (an ONNX file, white-box through
  onnx2torch), through a policy wrap and through the HTTP target;
- the result round-trips through JSON, its audit document matches the published schema and the
  HTML report renders it.

An attack declares the data it needs (``data_kind``): ``any`` runs on the 8x8 digits splits,
``federated`` (clients' records) on the digits members, ``tabular`` on seeded records with a
sensitive column ``sex``. A new attack passes this suite
unchanged, or it is not done; ``tests/conformance/toys.py`` adds one in one file and one registry line.
"""

from __future__ import annotations

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tests.audit_attacks
import tests.conformance.toys  # noqa: F401
from invguard import policies
from invguard.attacks import ATTACKS, RunContext
from invguard.core import Access, AccessError
from invguard.core.result import AttackResult
from tests.conformance.contract import comparable, rendered, within_budget
from tests.servers import serve

BUDGET = 150
#: the data kinds this suite has a world for; the text family (language-model targets on text
#: splits) has its world in test_text_attacks.py
COVERED = ("any", "tabular", "federated")
NAMES = [n for n in ATTACKS.names() if ATTACKS.get(n).data_kind in COVERED]


def _tabular():
    from invguard.data import Dataset, make_splits

    rng = np.random.default_rng(0)
    n = 1200
    x = rng.random((n, 4))
    s = rng.integers(0, 3, n)
    logit = 3.0 * (s - 1) + 2.0 * (x[:, 0] - 0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    X = np.concatenate([x, np.eye(3)[s]], axis=1).astype(np.float32)
    groups = {"f0": [0], "f1": [1], "f2": [2], "f3": [3], "sex": [4, 5, 6]}
    ds = Dataset(
        "tabular", X, y, "tabular", ("0", "1"), feature_groups=groups, categories={"sex": ["a", "b", "c"]}
    )
    return make_splits(ds, seed=0)


@pytest.fixture(scope="session")
def worlds(digits, digits_mlp):
    """Per data kind: (splits, the trained module)."""
    from invguard.models.train import fit

    tab = _tabular()
    spec = {"arch": "mlp", "hidden": [16], "input_shape": list(tab.input_shape), "num_classes": 2}
    module, _ = fit(spec, tab.members.X, tab.members.y, recipe="quick", seed=0)
    # federated: the gradient attacks simulate the clients' rounds on the digits members
    return {"any": (digits, digits_mlp), "federated": (digits, digits_mlp), "tabular": (tab, module)}


@pytest.fixture(scope="session")
def ctx(run_cache):
    return RunContext(cache_dir=run_cache)


@pytest.fixture(scope="session")
def model_server(worlds):
    """Both models behind a KServe v2 endpoint on loopback (logits), counting the rows served."""
    import torch

    served = {"rows": 0}

    async def infer(request: Request) -> JSONResponse:
        (inp,) = (await request.json())["inputs"]
        x = torch.as_tensor(np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"]))
        served["rows"] += int(x.shape[0])
        with torch.no_grad():
            z = worlds[request.path_params["kind"]][1](x).double().numpy()
        return JSONResponse(
            {
                "outputs": [
                    {"name": "logits", "shape": list(z.shape), "datatype": "FP64", "data": z.ravel().tolist()}
                ]
            }
        )

    app = Starlette(routes=[Route("/v2/models/{kind}/infer", infer, methods=["POST"])])
    with serve(app) as url:
        yield url, served


def _world(name, worlds):
    cls = ATTACKS.get(name)
    splits, module = worlds[cls.data_kind]
    return cls, splits, module


def _target(module, splits, **kw):
    from invguard.targets import TorchTarget

    return TorchTarget(module, input_shape=splits.input_shape, **kw)


@pytest.fixture(scope="session")
def first_runs(worlds, ctx):
    """Each attack once at its fast_params on the white-box model, seed 1, shared by the tests and run
    when a test first asks for it (so no single set-up runs every attack)."""
    cache: dict[str, AttackResult] = {}

    def get(name: str) -> AttackResult:
        if name not in cache:
            cls, splits, module = _world(name, worlds)
            cache[name] = cls.fast().run(_target(module, splits), splits, seed=1, context=ctx)
        return cache[name]

    return get


def test_the_registry_holds_every_family_and_the_toy():
    families = {ATTACKS.get(n).family() for n in NAMES}
    assert {"inversion", "membership", "attribute", "hybrid", "toy"} <= families
    from tests.conformance.test_text_attacks import NAMES as TEXT_NAMES

    uncovered = {n for n in ATTACKS.names() if ATTACKS.get(n).data_kind not in COVERED} - set(TEXT_NAMES)
    assert uncovered == set(), f"no conformance world for {sorted(uncovered)}"


@pytest.mark.parametrize("name", NAMES)
def test_refused_below_its_access_with_no_query_spent(name, worlds):
    cls, splits, module = _world(name, worlds)
    attack = cls.fast()
    need = attack.required_access(_target(module, splits))
    if need == Access.LABEL:
        assert cls.requires == Access.LABEL  # nothing lies below label access to refuse
        return
    if need == Access.WHITEBOX:
        lower = _target(module, splits, access="logits")
    else:
        lower = (policies.LabelOnly() if need == Access.SCORES else policies.ScoresOnly()).wrap(
            _target(module, splits)
        )
    with pytest.raises(AccessError, match=rf"^{name} needs {need.name}; this target grants "):
        attack.run(lower, splits)
    assert lower.queries_used == 0


@pytest.mark.parametrize("name", NAMES)
def test_seeded_runs_are_identical(name, worlds, ctx, first_runs):
    cls, splits, module = _world(name, worlds)
    again = cls.fast().run(_target(module, splits), splits, seed=1, context=ctx)
    assert comparable(again) == comparable(first_runs(name))


def _told_the_architecture(cls, splits, worlds):
    """The attack at its fast_params; an attack that trains reference models like the target is
    given the architecture an HTTP endpoint does not reveal (as an audit config must)."""
    import dataclasses

    if "arch" in {f.name for f in dataclasses.fields(cls)}:
        module = worlds[cls.data_kind][1]
        return cls.fast(arch=dict(module.invguard_spec))
    return cls.fast()


@pytest.fixture(scope="session")
def onnx_files(worlds, tmp_path_factory):
    """Each world's model exported to ONNX: the on-device target (white-box through onnx2torch)."""
    from invguard.targets.onnx import export_onnx

    where = tmp_path_factory.mktemp("onnx")
    return {
        kind: export_onnx(module, where / f"{kind}.onnx", input_shape=tuple(splits.input_shape))
        for kind, (splits, module) in worlds.items()
    }


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_never_exceeded_on_the_device_model_and_through_a_policy(name, worlds, ctx, onnx_files):
    from invguard.targets.onnx import OnnxTarget

    cls, splits, module = _world(name, worlds)
    attack = cls.fast()
    device = OnnxTarget(onnx_files[cls.data_kind], budget=BUDGET)
    assert device.access == Access.WHITEBOX  # the graph converts: gradients on the device
    within_budget(attack, device, splits, ctx, device, BUDGET)
    if attack.requires <= Access.SCORES:
        wrapped = policies.PolicyTarget(_target(module, splits), policies.ScoresOnly(), budget=BUDGET)
        within_budget(attack, wrapped, splits, ctx, wrapped, BUDGET)


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_never_exceeded_through_the_http_target(name, worlds, ctx, model_server):
    from invguard.targets import HttpTarget

    cls, splits, _ = _world(name, worlds)
    url, served = model_server
    http = HttpTarget(
        f"{url}/v2/models/{cls.data_kind}/infer",
        preset="kserve-v2",
        returns="logits",
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        budget=BUDGET,
    )
    attack = _told_the_architecture(cls, splits, worlds)
    before = served["rows"]
    if attack.required_access(http) > http.access:
        with pytest.raises(AccessError):
            attack.run(http, splits)
    else:
        within_budget(attack, http, splits, ctx, http, BUDGET)
    assert served["rows"] - before == http.queries_used <= BUDGET


@pytest.mark.parametrize("name", NAMES)
def test_result_round_trips_matches_the_schema_and_renders(name, first_runs, worlds):
    from invguard.audit.config import parse_config

    r = first_runs(name)
    cfg = parse_config(
        {
            "target": {"model": "reference/digits-mlp"},
            "data": {"dataset": "digits"},
            "attacks": [{"name": name, "params": dict(ATTACKS.get(name).fast_params)}],
        }
    )
    splits = worlds[ATTACKS.get(name).data_kind][0]
    page = rendered(r, cfg, splits, kind="torch-file", model="digits-mlp")
    assert name in page
