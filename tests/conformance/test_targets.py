"""Every target adapter runs through the same contract.

All adapters wrap the same linear model (fixed weights), so they must also agree on labels.
The HTTP target is tested against a real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import tests.conformance.toys  # noqa: F401  (registers the toy target)
from invguard.core import Access, BudgetExhausted, ConfigError, Prediction, TargetError
from invguard.targets import CallableTarget, HttpTarget, SklearnTarget
from tests.servers import serve

SHAPE = (1, 8, 8)
C = 10
_W = np.random.default_rng(42).normal(size=(64, C))
_B = np.random.default_rng(43).normal(size=C)


def linear_logits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1) @ _W + _B


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------------------ test server
class ModelServer:
    def __init__(self) -> None:
        self.requests = 0
        self.flaky_left = 0

    async def kserve(self, request: Request) -> Response:
        self.requests += 1
        body = await request.json()
        # the Open Inference Protocol (v2) request: named, typed, shaped, row-major flat data
        (inp,) = body["inputs"]
        ok = (
            isinstance(inp.get("name"), str)
            and inp.get("datatype") == "FP32"
            and len(inp["shape"]) == 4
            and len(inp["data"]) == int(np.prod(inp["shape"]))
            and all(isinstance(v, float | int) for v in inp["data"][:5])
        )
        if not ok:
            return JSONResponse({"error": "not a valid v2 inference request"}, status_code=400)
        x = np.asarray(inp["data"], dtype=np.float64).reshape(inp["shape"])
        z = linear_logits(x)
        kind = request.path_params["kind"]
        out = z if kind == "logits" else softmax(z)
        return JSONResponse(
            {
                "model_name": "m",
                "outputs": [
                    {
                        "name": "output",
                        "shape": list(out.shape),
                        "datatype": "FP64",
                        "data": out.ravel().tolist(),
                    }
                ],
            }
        )

    async def instances(self, request: Request) -> Response:
        self.requests += 1
        x = np.asarray((await request.json())["instances"], dtype=np.float64)
        return JSONResponse({"predictions": softmax(linear_logits(x)).tolist()})

    async def labels(self, request: Request) -> Response:
        self.requests += 1
        x = np.asarray((await request.json())["instances"], dtype=np.float64)
        return JSONResponse({"predictions": np.argmax(linear_logits(x), 1).tolist()})

    async def flaky(self, request: Request) -> Response:
        self.requests += 1
        if self.flaky_left > 0:
            self.flaky_left -= 1
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "1"})
        x = np.asarray((await request.json())["instances"], dtype=np.float64)
        return JSONResponse({"predictions": softmax(linear_logits(x)).tolist()})

    async def bad(self, request: Request) -> Response:
        self.requests += 1
        x = np.asarray((await request.json())["instances"], dtype=np.float64)
        kind = request.path_params["kind"]
        if kind == "json":
            return Response(b"{not json", media_type="application/json")
        if kind == "field":
            return JSONResponse({"outputs": [1, 2]})
        if kind == "classes":
            return JSONResponse({"predictions": softmax(linear_logits(x))[:, :7].tolist()})
        if kind == "nan":
            return Response(
                json.dumps({"predictions": [[float("nan")] * C] * len(x)}), media_type="application/json"
            )
        if kind == "rows":
            return JSONResponse({"predictions": softmax(linear_logits(x))[:1].tolist() * (len(x) + 1)})
        return JSONResponse({"detail": "boom"}, status_code=500)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/models/{kind}/infer", self.kserve, methods=["POST"]),
                Route("/v1/models/m:predict", self.instances, methods=["POST"]),
                Route("/labels", self.labels, methods=["POST"]),
                Route("/flaky", self.flaky, methods=["POST"]),
                Route("/bad/{kind}", self.bad, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="module")
def server():
    srv = ModelServer()
    with serve(srv.app()) as url:
        srv.url = url
        yield srv


# ------------------------------------------------------------------------------------------ adapters
def make_torch(budget=None, **_):
    import torch

    from invguard.targets.torch import TorchTarget

    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, C)).double()
    with torch.no_grad():
        lin[1].weight.copy_(torch.as_tensor(_W.T))
        lin[1].bias.copy_(torch.as_tensor(_B))

    class F64(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = lin

        def forward(self, x):
            return self.inner(x.double())

    return TorchTarget(F64(), input_shape=SHAPE, budget=budget)


def make_sklearn(budget=None, **_):
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression()
    est.coef_ = _W.T.copy()
    est.intercept_ = _B.copy()
    est.classes_ = np.arange(C)
    est.n_features_in_ = 64
    return SklearnTarget(est, input_shape=SHAPE, budget=budget)


def make_callable(budget=None, **_):
    return CallableTarget(linear_logits, input_shape=SHAPE, num_classes=C, outputs="logits", budget=budget)


def make_http_kserve(budget=None, server=None):
    return HttpTarget(
        f"{server.url}/v2/models/logits/infer",
        preset="kserve-v2",
        returns="logits",
        input_shape=SHAPE,
        num_classes=C,
        budget=budget,
        batch_size=7,
    )


def make_http_instances(budget=None, server=None):
    return HttpTarget(
        f"{server.url}/v1/models/m:predict",
        preset="instances",
        returns="scores",
        input_shape=SHAPE,
        num_classes=C,
        budget=budget,
    )


def make_http_labels(budget=None, server=None):
    return HttpTarget(
        f"{server.url}/labels",
        preset="instances",
        returns="labels",
        input_shape=SHAPE,
        num_classes=C,
        budget=budget,
    )


def make_onnx(budget=None, **_):
    """The same linear model exported to an ONNX file (a model shipped to a device)."""
    import tempfile

    from invguard.targets.onnx import OnnxTarget, export_onnx

    path = _ONNX.get("path")
    if path is None:
        path = export_onnx(
            make_torch().inner_module(), f"{tempfile.mkdtemp()}/linear.onnx", input_shape=SHAPE
        )
        _ONNX["path"] = path
    return OnnxTarget(path, budget=budget)


_ONNX: dict = {}


def make_toy(budget=None, **_):
    from tests.conformance.toys import LinearSoftmax

    return LinearSoftmax(_W, _B, input_shape=SHAPE, budget=budget)


#: one row per registered target kind (and the HTTP presets): adding a kind without one fails below
ADAPTERS = {
    "torch": (make_torch, Access.WHITEBOX),
    "onnx": (make_onnx, Access.WHITEBOX),
    "toy": (make_toy, Access.LOGITS),
    "sklearn": (make_sklearn, Access.SCORES),
    "callable": (make_callable, Access.LOGITS),
    "http-kserve-v2": (make_http_kserve, Access.LOGITS),
    "http-instances": (make_http_instances, Access.SCORES),
    "http-labels": (make_http_labels, Access.LABEL),
}


def test_every_registered_target_kind_is_in_the_suite():
    from invguard.targets import TARGETS

    assert set(TARGETS.names()) == {k.split("-")[0] for k in ADAPTERS}


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request, server):
    factory, access = ADAPTERS[request.param]
    return (lambda budget=None: factory(budget=budget, server=server)), access


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(0).random((20, *SHAPE)).astype(np.float32)


def test_contract_shape_and_access(adapter, inputs):
    make, access = adapter
    t = make()
    assert t.num_classes == C and t.input_shape == SHAPE and t.access is access
    assert isinstance(t.describe(), str) and access.name in t.describe()
    p = t.predict(inputs)
    assert isinstance(p, Prediction) and len(p) == 20 and p.labels.dtype == np.int64
    assert ((p.labels >= 0) & (p.labels < C)).all()
    assert (p.scores is not None) == (access >= Access.SCORES)
    assert (p.logits is not None) == (access >= Access.LOGITS)
    if p.scores is not None:
        np.testing.assert_allclose(p.scores.sum(1), 1.0, rtol=1e-6)
    # the same model behind every adapter: the same labels
    assert p.labels.tolist() == np.argmax(linear_logits(inputs), 1).tolist()
    one = t.predict(inputs[0])
    assert len(one) == 1 and one.labels[0] == p.labels[0]


def test_contract_counts_queries_and_respects_budget(adapter, inputs, server):
    make, _ = adapter
    t = make(budget=25)
    t.predict(inputs)
    assert t.queries_used == 20
    sent = server.requests
    with pytest.raises(
        BudgetExhausted, match=r"query budget exhausted: 20 of 25 queries used, this request needs 6"
    ):
        t.predict(inputs[:6])
    assert t.queries_used == 20 and server.requests == sent  # nothing sent past the budget
    t.predict(inputs[:5])
    assert t.queries_used == 25


def test_contract_rejects_bad_input(adapter):
    make, _ = adapter
    t = make()
    with pytest.raises(ConfigError, match=r"input of shape \(3, 5\) does not match the target's input shape"):
        t.predict(np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        t.predict(np.full((1, *SHAPE), np.nan))
    with pytest.raises(ConfigError, match="empty batch: pass at least one sample"):
        t.predict(np.zeros((0, *SHAPE)))
    with pytest.raises(ConfigError, match=r"\(channels-last\? transpose the batch to channels-first\)"):
        t.predict(np.zeros((2, 8, 8, 1)))
    assert t.queries_used == 0
    flat = t.predict(np.zeros((2, 64)))  # a flat batch of the right width is accepted
    assert len(flat) == 2


# ------------------------------------------------------------------------------------------ HTTP specifics
def test_http_429_with_retry_after_waits_and_succeeds(server, inputs):
    server.flaky_left = 1
    t = HttpTarget(f"{server.url}/flaky", preset="instances", input_shape=SHAPE, num_classes=C)
    before = server.requests
    t0 = time.monotonic()
    p = t.predict(inputs[:3])
    waited = time.monotonic() - t0
    assert len(p) == 3 and server.requests - before == 2
    assert waited >= 0.9  # it honoured Retry-After: 1
    assert t.queries_used == 3


def test_http_429_forever_is_a_target_error(server, inputs):
    server.flaky_left = 10
    t = HttpTarget(
        f"{server.url}/flaky",
        preset="instances",
        input_shape=SHAPE,
        num_classes=C,
        retries=1,
        max_retry_after=0.05,
    )
    with pytest.raises(TargetError, match=r"-> 429 .*still rate-limited after retries"):
        t.predict(inputs[:1])
    server.flaky_left = 0


def test_http_server_down_is_a_target_error():
    from tests.servers import free_port

    t = HttpTarget(
        f"http://127.0.0.1:{free_port()}/v2/models/m/infer",
        input_shape=SHAPE,
        num_classes=C,
        retries=1,
        backoff=0.01,
    )
    with pytest.raises(TargetError, match=r"cannot reach the endpoint after retries") as e:
        t.predict(np.zeros((1, *SHAPE)))
    assert e.value.exit_code == 3


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("json", r"-> 200 \(body: '\{not json'\): response is not valid JSON"),
        ("field", r"response does not match the 'instances' preset \(missing or bad field 'predictions'\)"),
        ("classes", r"expected 10 classes, got 7 scores per row"),
        ("nan", r"scores contain NaN or infinite values"),
        ("rows", r"expected scores of shape \(2, 10\), got \(3, 10\)"),
        ("status", r"-> 500 \(body: '\{\"detail\":\"boom\"\}'\): the endpoint answered with an error status"),
    ],
)
def test_http_malformed_responses_are_never_predictions(server, kind, message):
    t = HttpTarget(
        f"{server.url}/bad/{kind}", preset="instances", input_shape=SHAPE, num_classes=C, retries=0
    )
    with pytest.raises(TargetError, match=rf"POST {server.url}/bad/{kind}") as e:
        t.predict(np.zeros((2, *SHAPE)))
    assert e.match(message)


def test_http_custom_preset_and_api_key(server, inputs, monkeypatch):
    seen = {}

    async def custom(request: Request) -> Response:
        seen["key"] = request.headers.get("x-api-key")
        x = np.asarray((await request.json())["payload"]["rows"], dtype=np.float64)
        return JSONResponse({"result": {"probs": softmax(linear_logits(x)).tolist()}})

    monkeypatch.setenv("TEST_MODEL_KEY", "s3cret")
    with serve(Starlette(routes=[Route("/c", custom, methods=["POST"])])) as url:
        t = HttpTarget(
            f"{url}/c",
            preset="custom",
            request_template={"payload": {"rows": "$inputs"}},
            response_field="result.probs",
            input_shape=SHAPE,
            num_classes=C,
            api_key_env="TEST_MODEL_KEY",
        )
        p = t.predict(inputs[:4])
    assert seen["key"] == "s3cret" and p.scores.shape == (4, C)


def test_http_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'triton'"):
        HttpTarget("http://x/y", preset="triton", input_shape=SHAPE, num_classes=C)
    with pytest.raises(ConfigError, match="environment variable NO_SUCH_VAR_XYZ"):
        HttpTarget("http://x/y", api_key_env="NO_SUCH_VAR_XYZ", input_shape=SHAPE, num_classes=C)
    with pytest.raises(ConfigError, match="url must start with http"):
        HttpTarget("ftp://x", input_shape=SHAPE, num_classes=C)


def test_torch_target_whitebox_gradients_and_access():
    import torch

    from invguard.core import AccessError

    t = make_torch()
    x = torch.zeros((2, *SHAPE), dtype=torch.float64, requires_grad=True)
    t.forward(x).sum().backward()
    assert x.grad is not None and t.queries_used == 2
    from invguard.targets.torch import TorchTarget

    blackbox = TorchTarget(t.module, input_shape=SHAPE, access="scores")
    with pytest.raises(AccessError, match="only exposed at WHITEBOX access; this target grants SCORES"):
        _ = blackbox.module


def test_http_does_not_follow_redirects_with_the_api_key(server):
    seen = []

    async def moved(request: Request) -> Response:
        return Response(status_code=307, headers={"Location": f"{other}/steal"})

    async def steal(request: Request) -> Response:
        seen.append(request.headers.get("x-api-key"))
        return JSONResponse({"predictions": [[0.1] * C]})

    with (
        serve(Starlette(routes=[Route("/steal", steal, methods=["POST"])])) as other,
        serve(Starlette(routes=[Route("/moved", moved, methods=["POST"])])) as url,
    ):
        t = HttpTarget(f"{url}/moved", preset="instances", input_shape=SHAPE, num_classes=C, api_key="SECRET")
        with pytest.raises(
            TargetError, match=r"-> 307 .*the endpoint redirects \(to http://127.0.0.1:\d+/steal\)"
        ):
            t.predict(np.zeros((1, *SHAPE)))
    assert seen == []


def test_http_custom_template_must_place_the_inputs():
    with pytest.raises(ConfigError, match='request_template must contain the string "\\$inputs"'):
        HttpTarget(
            "http://x/y",
            preset="custom",
            request_template={"rows": []},
            response_field="p",
            input_shape=SHAPE,
            num_classes=C,
        )


def test_http_credentials_in_url_never_reach_messages():
    from tests.servers import free_port

    t = HttpTarget(f"http://user:pw@127.0.0.1:{free_port()}/x", input_shape=SHAPE, num_classes=C, retries=0)
    with pytest.raises(TargetError) as e:
        t.predict(np.zeros((1, *SHAPE)))
    assert "pw" not in str(e.value) and "***" in str(e.value) and "pw" not in t.describe()


def test_budget_holds_under_concurrency(server):
    from concurrent.futures import ThreadPoolExecutor

    t = make_http_instances(budget=50, server=server)
    before = server.requests

    def one(_):
        try:
            t.predict(np.zeros((1, *SHAPE)))
            return 1
        except BudgetExhausted:
            return 0

    with ThreadPoolExecutor(8) as ex:
        served = sum(ex.map(one, range(80)))
    assert served == 50 and t.queries_used == 50 and server.requests - before == 50


def test_torch_target_validates_the_module_output():
    import torch

    from invguard.targets.torch import TorchTarget

    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, C))
    with pytest.raises(TargetError, match="expected 5 classes, got 10 logits per row"):
        TorchTarget(lin, input_shape=SHAPE, num_classes=5).predict(np.zeros((2, *SHAPE)))

    class NaNs(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), C), float("nan"))

    with pytest.raises(TargetError, match="logits contain NaN or infinite values"):
        TorchTarget(NaNs(), input_shape=SHAPE, num_classes=C).predict(np.zeros((1, *SHAPE)))
    with pytest.raises(ConfigError, match=r"does not accept inputs of shape \(3, 8, 8\)"):
        TorchTarget(lin, input_shape=(3, 8, 8))
    double = TorchTarget(make_torch().module.inner, input_shape=SHAPE)  # a float64 module works
    assert len(double.predict(np.zeros((2, *SHAPE)))) == 2
