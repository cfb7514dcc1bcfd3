"""The ``instances`` / ``predictions`` format (TensorFlow Serving REST, KServe v1, Vertex AI)."""

from __future__ import annotations

from typing import Any

import numpy as np


def request(x: np.ndarray) -> dict[str, Any]:
    return {"instances": x.tolist()}


def predictions(doc: Any) -> Any:
    """The answer's ``predictions`` (KeyError/TypeError if it has none)."""
    return doc["predictions"]
