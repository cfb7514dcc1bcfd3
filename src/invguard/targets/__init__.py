"""Adapters that turn a model into a :class:`~invguard.core.target.Target`.

``TorchTarget`` (white-box torch module), ``SklearnTarget`` (``predict_proba``), ``CallableTarget``
(any Python function) and ``HttpTarget`` (a live endpoint: KServe/Triton v2, ``instances`` APIs,
the invguard guard, or a custom JSON shape). Torch is imported only when a torch target is built.
"""

from typing import TYPE_CHECKING, Any

from invguard.targets.callable import CallableTarget
from invguard.targets.http import HttpTarget
from invguard.targets.sklearn import SklearnTarget

if TYPE_CHECKING:
    from invguard.targets.torch import TorchTarget

__all__ = ["CallableTarget", "HttpTarget", "SklearnTarget", "TorchTarget"]


def __getattr__(name: str) -> Any:
    if name == "TorchTarget":
        from invguard.targets.torch import TorchTarget

        return TorchTarget
    raise AttributeError(name)
