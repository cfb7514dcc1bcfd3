"""An on-device model: an ONNX file the attacker holds (the threat model's pattern 5).

A model shipped inside an app is a file on the attacker's device: they can query it without limit
(no server, no rate limit, no budget unless the audit sets one) and read its logits. Where the
graph converts to torch (onnx2torch), the attacker also has its gradients: the target grants
``WHITEBOX`` and exposes the converted module, so every white-box attack runs on it unchanged. A
graph that does not convert leaves ``LOGITS`` access, and ``describe()`` says why.

onnxruntime answers every query (the deployed behaviour); the converted module is used only for
gradients. ``export_onnx`` writes an invguard-trained torch module as such a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import AccessError, ConfigError, TargetError
from invguard.core.target import BaseTarget, Prediction
from invguard.targets.callable import prediction_from_output
from invguard.targets.registry import TARGETS


@TARGETS.register("onnx")
class OnnxTarget(BaseTarget):
    """An ONNX classifier whose (first) output is logits of shape ``(n, num_classes)``.

    ``access`` defaults to the strongest that works: ``WHITEBOX`` when the graph converts to torch,
    else ``LOGITS``; give a lower level to audit the model as a black box. ``input_shape`` is read
    from the graph when its dimensions are fixed (give it for a dynamic graph).
    """

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        access: Access | str | None = None,
        budget: int | None = None,
        name: str = "onnx",
    ) -> None:
        import onnxruntime as ort

        if isinstance(model, bytes):
            blob, where = model, "the ONNX model"
        else:
            p = Path(model)
            if not p.is_file():
                raise ConfigError(f"{name}: ONNX file not found: {p}")
            blob, where = p.read_bytes(), str(p)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad graph
            raise ConfigError(
                f"{name}: {where} is not a loadable ONNX model ({type(e).__name__}: {e})"
            ) from None
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        if input_shape is None:
            dims = list(inp.shape)[1:]
            if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
                raise ConfigError(
                    f"{name}: the graph's input {inp.name!r} has dynamic dimensions {inp.shape}; "
                    "give input_shape"
                )
            input_shape = tuple(int(d) for d in dims)
        self.source = where
        self._module: Any = None
        self.conversion_note: str | None = None
        try:
            import onnx
            from onnx2torch import convert

            self._module = convert(onnx.load_model_from_string(blob)).eval()
            meta = self._session.get_modelmeta().custom_metadata_map
            if "invguard_spec" in meta:  # exported by invguard: the architecture is in the file
                self._module.invguard_spec = json.loads(meta["invguard_spec"])
        except Exception as e:  # a graph onnx2torch cannot translate: black-box only
            self.conversion_note = (
                f"no gradients: the graph does not convert to torch ({type(e).__name__}: {e})"
            )
        strongest = Access.WHITEBOX if self._module is not None else Access.LOGITS
        level = strongest if access is None else Access.parse(access)
        if level > strongest:
            raise AccessError(f"{name}: {self.conversion_note}; the file grants at most {strongest.name}")
        if num_classes is None:
            out = self._run(np.zeros((1, *input_shape), dtype=np.float32))
            num_classes = int(out.shape[-1])
        super().__init__(
            num_classes=num_classes, input_shape=tuple(input_shape), access=level, budget=budget, name=name
        )

    def describe(self) -> str:
        if self.access < Access.WHITEBOX and self.conversion_note:
            return f"{self.access.name} ({self.conversion_note})"
        return self.access.name

    def inner_module(self) -> Any:
        """The converted torch module (None when the graph does not convert)."""
        return self._module

    @property
    def module(self) -> Any:
        if self.access < Access.WHITEBOX or self._module is None:
            raise AccessError(
                f"{self.name}: the module is only exposed at WHITEBOX access; this target grants "
                f"{self.describe()}"
            )
        return self._module

    def forward(self, x: Any) -> Any:
        """Differentiable logits of the converted module (WHITEBOX only); counts ``len(x)`` queries."""
        module = self.module
        self.charge(int(x.shape[0]))
        return module(x.float())

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self._session.run(None, {self._input_name: x})[0]
        except Exception as e:
            raise TargetError(f"{self.name}: onnxruntime failed on a batch of shape {x.shape}: {e}") from e
        return np.asarray(out, dtype=np.float64)

    def _predict(self, x: np.ndarray) -> Prediction:
        pred = prediction_from_output(self._run(x), "logits", x.shape[0], self.num_classes, self.name)
        if self.access >= Access.LOGITS:
            return pred
        return Prediction.from_logits(pred.logits, self.access)  # type: ignore[arg-type]


def export_onnx(module: Any, path: str | Path, *, input_shape: tuple[int, ...]) -> Path:
    """Write a torch classifier as an ONNX file (batch dimension dynamic, opset 17), atomically. An
    invguard-built module's architecture spec goes into the file's metadata (``invguard_spec``), as
    anyone holding the file can read the graph anyway."""
    import onnx
    import torch

    from invguard.storage import atomic_path

    p = Path(path)
    module.eval()
    dummy = torch.zeros((1, *input_shape), dtype=torch.float32)
    with atomic_path(p) as tmp:
        torch.onnx.export(
            module,
            (dummy,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        spec = getattr(module, "invguard_spec", None)
        if spec is not None:
            graph = onnx.load(str(tmp))
            entry = graph.metadata_props.add()
            entry.key, entry.value = "invguard_spec", json.dumps(spec, sort_keys=True)
            onnx.save(graph, str(tmp))
    return p
