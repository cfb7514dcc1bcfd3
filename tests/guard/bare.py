"""A bare KServe-v2 model server (no guard) for proxy tests."""

from __future__ import annotations

import json

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def kserve_app(target, name: str = "digits") -> Starlette:
    async def infer(request: Request) -> Response:
        doc = json.loads(await request.body())
        t = doc["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        logits = target.predict(x).logits
        out = {
            "model_name": name,
            "outputs": [
                {
                    "name": "logits",
                    "shape": list(logits.shape),
                    "datatype": "FP64",
                    "data": logits.reshape(-1).tolist(),
                }
            ],
        }
        return Response(json.dumps(out), media_type="application/json")

    return Starlette(routes=[Route(f"/v2/models/{name}/infer", infer, methods=["POST"])])


def failing_app(status: int = 500, doc: object = None, name: str = "digits") -> Starlette:
    """An upstream that always answers ``status`` with ``doc`` (JSON)."""

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(json.dumps(doc if doc is not None else {"error": "boom"}), status_code=status)

    return Starlette(routes=[Route(f"/v2/models/{name}/infer", infer, methods=["POST"])])
