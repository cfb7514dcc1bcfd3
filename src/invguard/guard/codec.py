"""The guard's request and response wire formats: the invguard v1 API and KServe v2 (server side).

``v1``: ``POST /v1/models/{name}/predict`` with ``{"inputs": [...]}``, answered with
``{"labels", "policy", "access", "scores"?, "logits"?}``. ``v2``: ``POST /v2/models/{name}/infer``
with one input tensor ``{name, shape, datatype, data}`` (data flat or nested, row-major), answered
with KServe v2 ``outputs`` (both through :mod:`invguard.wire.kserve`, the codec the clients use).
Decoding checks everything a client can get wrong and raises :class:`BadInput` with the HTTP status,
a stable code and a message naming the field; nothing here knows about keys, limits or the log.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from invguard.wire import kserve

V1 = "/v1/models/{name}/predict"
V2 = "/v2/models/{name}/infer"
_BOOL_TOKENS = (b"true", b"false", b"null")

ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class BadInput(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _has_bool(x: Any) -> bool:
    """True if a nested list holds true/false/null (iterative: no recursion limit to hit)."""
    stack = [x]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, bool) or v is None:
            return True
    return False


async def read_body(
    cl: str | None, stream: AsyncIterator[bytes], max_body: int, timeout: float | None = None
) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``max_body`` bytes, and
    (408) if it has not all arrived within ``timeout`` seconds."""
    if cl is not None and cl.isdigit() and int(cl) > max_body:
        raise BadInput(
            413,
            "payload_too_large",
            f"request body of {cl} bytes exceeds the limit of {max_body} bytes",
        )
    chunks = []
    total = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in stream:
                total += len(chunk)
                if total > max_body:
                    raise BadInput(
                        413, "payload_too_large", f"request body exceeds the limit of {max_body} bytes"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise BadInput(
            408, "request_timeout", f"the request body did not arrive within {timeout:g} s"
        ) from None
    return b"".join(chunks)


def content_problem(ctype: str | None, cenc: str | None) -> BadInput | None:
    """A 415 for a body that is not plain JSON (a Content-Encoding, or another media type)."""
    if cenc is not None and cenc.strip().lower() not in ("", "identity"):
        return BadInput(
            415,
            "unsupported_media_type",
            f"Content-Encoding {cenc.strip()!r} is not supported; send the JSON body unencoded",
        )
    if ctype is not None:
        mt = ctype.split(";", 1)[0].strip().lower()
        if mt != "application/json" and not (mt.startswith("application/") and mt.endswith("+json")):
            return BadInput(
                415,
                "unsupported_media_type",
                f"Content-Type {mt!r} is not supported; send application/json",
            )
    return None


class InputCodec:
    """Decodes request bodies into a float32 batch of ``input_shape`` samples within ``[lo, hi]``."""

    def __init__(self, input_shape: tuple[int, ...], max_batch: int, lo: float, hi: float) -> None:
        self.input_shape = input_shape
        self.max_batch = max_batch
        self.lo, self.hi = lo, hi
        self._finite_range = math.isfinite(lo) and math.isfinite(hi)

    def check_batch(self, arr: np.ndarray, where: str) -> np.ndarray:
        if arr.dtype.kind not in "iuf":
            raise BadInput(
                400, "bad_input", f"{where}: every value must be a number (found {arr.dtype.kind!r} data)"
            )
        if arr.ndim == 0 or arr.shape[0] < 1:
            raise BadInput(400, "bad_input", f"{where}: give a non-empty batch of samples")
        shape = self.input_shape
        if arr.shape[1:] != shape:
            raise BadInput(
                400,
                "bad_shape",
                f"{where}: expected a batch of shape (n, {', '.join(map(str, shape))}), "
                f"got {tuple(arr.shape)}",
            )
        if arr.shape[0] > self.max_batch:
            raise BadInput(
                400,
                "batch_too_large",
                f"{where}: {arr.shape[0]} samples exceed the limit of {self.max_batch}",
            )
        # min/max propagate NaN and a NaN compares false, so NaN fails the range test; +-inf fail it
        # too when the range is finite (else isfinite is checked)
        lo, hi = arr.min(), arr.max()
        if not (lo >= self.lo and hi <= self.hi) or (not self._finite_range and not np.isfinite(arr).all()):
            raise BadInput(
                400, "bad_value", f"{where}: values must be finite numbers in [{self.lo:g}, {self.hi:g}]"
            )
        return arr.astype(np.float32)

    def parse_v1(self, body: bytes) -> np.ndarray:
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadInput(400, "bad_json", "request body is not valid JSON") from None
        except RecursionError:
            raise BadInput(400, "bad_json", "request body is nested too deeply") from None
        if not isinstance(doc, dict):
            raise BadInput(400, "bad_input", 'request body must be a JSON object {"inputs": [...]}')
        extra = sorted(set(doc) - {"inputs"})
        if extra:
            raise BadInput(400, "bad_input", f'unknown field(s) {extra}; the body is {{"inputs": [...]}}')
        if "inputs" not in doc:
            raise BadInput(400, "bad_input", 'missing field "inputs" (a list of samples)')
        inputs = doc["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise BadInput(400, "bad_input", "inputs: must be a non-empty list of samples")
        if len(inputs) > self.max_batch:
            raise BadInput(
                400, "batch_too_large", f"inputs: {len(inputs)} samples exceed the limit of {self.max_batch}"
            )
        try:
            arr = np.array(inputs)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise BadInput(
                400,
                "bad_shape",
                f"inputs: samples must be nested lists of numbers of shape {self.input_shape} "
                "(ragged or mixed data)",
            ) from None
        if any(t in body for t in _BOOL_TOKENS) and _has_bool(inputs):
            raise BadInput(400, "bad_input", "inputs: every value must be a number (found true/false/null)")
        return self.check_batch(arr, "inputs")

    def parse_v2(self, body: bytes) -> tuple[np.ndarray, str | None]:
        try:
            doc = json.loads(body)
        except ValueError:
            raise BadInput(400, "bad_json", "request body is not valid JSON") from None
        except RecursionError:
            raise BadInput(400, "bad_json", "request body is nested too deeply") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            raise BadInput(
                400,
                "bad_input",
                'request body must be a JSON object {"inputs": [{name, shape, datatype, data}]}',
            )
        extra = sorted(set(doc) - {"inputs", "id"})
        if extra:
            raise BadInput(400, "bad_input", f"unknown field(s) {extra}")
        rid = doc.get("id")
        if rid is not None and (not isinstance(rid, str) or len(rid) > 128):
            raise BadInput(400, "bad_input", "id: must be a string of at most 128 characters")
        inputs = doc["inputs"]
        if len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise BadInput(
                400, "bad_input", "inputs: give exactly one input tensor {name, shape, datatype, data}"
            )
        t = inputs[0]
        extra = sorted(set(t) - {"name", "shape", "datatype", "data"})
        missing = sorted({"name", "shape", "datatype", "data"} - set(t))
        if extra or missing:
            raise BadInput(400, "bad_input", f"inputs[0]: missing {missing} / unknown {extra} fields")
        if not isinstance(t["name"], str) or len(t["name"]) > 64:
            raise BadInput(400, "bad_input", "inputs[0].name: must be a string of at most 64 characters")
        if t["datatype"] not in ("FP32", "FP64"):
            raise BadInput(
                400, "bad_dtype", f"inputs[0].datatype: expected FP32 or FP64, got {t['datatype']!r}"
            )
        shape = t["shape"]
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        ):
            raise BadInput(400, "bad_shape", "inputs[0].shape: must be a list of positive integers")
        if tuple(shape[1:]) != self.input_shape:
            raise BadInput(
                400,
                "bad_shape",
                f"inputs[0].shape: expected [n, {', '.join(map(str, self.input_shape))}], got {shape}",
            )
        if shape[0] > self.max_batch:
            raise BadInput(
                400,
                "batch_too_large",
                f"inputs[0].shape: {shape[0]} samples exceed the limit of {self.max_batch}",
            )
        data = t["data"]
        if not isinstance(data, list) or _has_bool(data):
            raise BadInput(
                400, "bad_input", f"inputs[0].data: must be a list of numbers, flat or nested as {shape}"
            )
        try:
            arr = kserve.tensor_data(data, shape)
        except ValueError as e:
            code = "bad_input" if str(e) == kserve.NOT_NUMBERS else "bad_shape"
            raise BadInput(
                400, code, f"inputs[0].data: must be a list of numbers, flat or nested as {shape} ({e})"
            ) from None
        return self.check_batch(arr, "inputs[0]"), rid


def encode_v1(
    labels: list[int], policy_label: str, access: str, scores: np.ndarray | None, logits: np.ndarray | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {"labels": labels, "policy": policy_label, "access": access}
    if scores is not None:
        doc["scores"] = scores.tolist()
    if logits is not None:
        doc["logits"] = logits.tolist()
    return doc
