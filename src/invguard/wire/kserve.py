"""KServe v2 / Triton (Open Inference Protocol) inference requests and responses.

One codec for every side that speaks it: the HTTP target and the guard's upstream client build
requests and read responses with it; the guard's ``/v2/models/{name}/infer`` reads requests'
tensor data and writes responses with it.

- A tensor is ``{name, shape, datatype, data}``; ``data`` is flat, or nested lists in row-major
  order (the protocol allows both), see :func:`tensor_data`.
- A response's ``outputs`` may carry several tensors (the guard's: ``labels`` INT64 ``[n]``, then
  ``scores`` / ``logits`` ``[n, C]``). :func:`pick_output` chooses by name when one is given, else
  the output named after what is wanted (``scores`` / ``logits``), else the first floating-point
  (FP32 / FP64) output of shape ``(n, C)``; labels are the first integer output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLOAT_TYPES = ("FP16", "FP32", "FP64")
NOT_NUMBERS = "not a list of numbers (ragged, or other values)"
INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


def request(x: np.ndarray, input_name: str = "input") -> dict[str, Any]:
    """An inference request with one FP32 tensor holding the batch ``x``."""
    return {
        "inputs": [
            {"name": input_name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
        ]
    }


def tensor_data(data: Any, shape: list[int]) -> np.ndarray:
    """The tensor's values as an array of ``shape``: ``data`` flat (row-major) or nested exactly as
    ``shape``. Raises ValueError naming what is wrong (ragged, wrong nesting, wrong count)."""
    try:
        arr = np.array(data)  # ragged nesting raises ValueError, deep nesting ValueError/RecursionError
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ValueError(NOT_NUMBERS) from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(NOT_NUMBERS)
    if arr.ndim == 1:
        if arr.size != math.prod(shape):
            raise ValueError(f"{arr.size} values do not fill shape {shape}")
        return arr.reshape(shape)
    if list(arr.shape) != list(shape):
        raise ValueError(f"nested as {list(arr.shape)}, not as the shape {shape}")
    return arr


def response(
    model_name: str,
    labels: list[int],
    policy_label: str,
    scores: np.ndarray | None,
    logits: np.ndarray | None,
    rid: str | None,
) -> dict[str, Any]:
    """The guard's v2 answer: ``labels`` (INT64) and whatever the policy lets through (FP64)."""
    outputs: list[dict[str, Any]] = [
        {"name": "labels", "shape": [len(labels)], "datatype": "INT64", "data": labels}
    ]
    for fname, arr in (("scores", scores), ("logits", logits)):
        if arr is not None:
            outputs.append(
                {
                    "name": fname,
                    "shape": list(arr.shape),
                    "datatype": "FP64",
                    "data": arr.reshape(-1).tolist(),
                }
            )
    doc: dict[str, Any] = {
        "model_name": model_name,
        "outputs": outputs,
        "parameters": {"policy": policy_label},
    }
    if rid is not None:
        doc["id"] = rid
    return doc


def _array(out: dict[str, Any]) -> np.ndarray:
    data = np.asarray(out["data"], dtype=np.float64)
    shape = out.get("shape")
    if shape is not None:
        if int(np.prod(shape)) != data.size:
            raise ValueError(f"output shape {shape} does not match {data.size} data values")
        data = data.reshape(shape)
    return data


def pick_output(doc: Any, n: int, num_classes: int, returns: str, name: str | None = None) -> np.ndarray:
    """The output that holds what is wanted (``labels``, ``scores`` or ``logits``) for a batch of
    ``n``; a flat ``n * C`` float output is reshaped to ``(n, C)``. KeyError/ValueError if none fits."""
    outputs = doc["outputs"]
    if not isinstance(outputs, list) or not outputs:
        raise KeyError("outputs")
    if name is not None:
        matches = [o for o in outputs if isinstance(o, dict) and o.get("name") == name]
        if not matches:
            raise KeyError(f"outputs[name={name}]")
        chosen = matches[0]
    else:
        chosen = _by_role(outputs, n, num_classes, returns)
    data = _array(chosen)
    if returns != "labels" and data.ndim == 1 and data.size == n * num_classes:
        data = data.reshape(n, num_classes)
    return data


def _by_role(outputs: list[Any], n: int, num_classes: int, returns: str) -> dict[str, Any]:
    outs = [o for o in outputs if isinstance(o, dict)]
    if not outs:
        raise KeyError("outputs[0]")
    if returns == "labels":
        ints = [o for o in outs if o.get("datatype") in INT_TYPES]
        return ints[0] if ints else outs[0]
    named = [o for o in outs if o.get("name") == returns]
    if named:
        return named[0]

    def fits(o: dict[str, Any]) -> bool:
        shape = o.get("shape")
        dt = o.get("datatype")
        if dt is not None and dt not in FLOAT_TYPES:
            return False
        if shape is None:
            return isinstance(o.get("data"), list) and len(o["data"]) == n * num_classes
        return list(shape) in ([n, num_classes], [n * num_classes])

    fitting = [o for o in outs if fits(o)]
    return fitting[0] if fitting else outs[0]
