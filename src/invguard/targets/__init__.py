"""Adapters that turn a model into a :class:`~invguard.core.target.Target`.

``TorchTarget`` (white-box torch module), ``SklearnTarget`` (``predict_proba``), ``CallableTarget``
(any Python function), ``HttpTarget`` (a live endpoint: KServe/Triton v2, ``instances`` APIs,
the invguard guard, or a custom JSON shape) and ``OnnxTarget`` (a model file shipped to a device).
``TARGETS`` maps each kind to its adapter. Torch is imported only when a torch or ONNX target is
built.
"""

from typing import TYPE_CHECKING, Any

from invguard.targets.callable import CallableTarget
from invguard.targets.http import HttpTarget
from invguard.targets.registry import TARGETS
from invguard.targets.sklearn import SklearnTarget

if TYPE_CHECKING:
    from invguard.targets.onnx import OnnxTarget
    from invguard.targets.torch import TorchTarget

__all__ = ["TARGETS", "CallableTarget", "HttpTarget", "OnnxTarget", "SklearnTarget", "TorchTarget"]

_LAZY = {"TorchTarget": "invguard.targets.torch", "OnnxTarget": "invguard.targets.onnx"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
