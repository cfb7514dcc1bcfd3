"""Models behind the guard: in process (torch, scikit-learn) or an upstream server over HTTP.

Every backend answers ``await predict(batch) -> Prediction`` at the highest access it has; the
guard's output policy reduces it afterwards. The upstream client uses one aiohttp
``ClientSession`` with a bounded connection pool (keep-alive), speaking the same presets as
:class:`invguard.targets.HttpTarget`: KServe / Triton v2 (Open Inference Protocol) and ``instances``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from invguard.core.access import Access
from invguard.core.errors import ConfigError, TargetError
from invguard.core.target import Prediction, unwrap
from invguard.guard.config import ModelConfig, UpstreamConfig
from invguard.targets.callable import prediction_from_output
from invguard.wire import instances, kserve
from invguard.wire.urls import redact_url


class UpstreamError(Exception):
    """The upstream could not be reached or gave an answer that is not a prediction.

    The message is for the server's logs and the audit record (the URL's userinfo and query string
    are redacted); clients get
    only a generic "upstream model server error"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class LocalModel:
    """A model in the guard's process, wrapped in a foundation target (torch or scikit-learn).

    The guard has already validated the batch (shape, dtype, finite values in range), so a torch
    model is called directly (inference mode, one forward pass) rather than through the target's
    per-call validation; other targets go through ``target.predict``.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self.input_shape: tuple[int, ...] = tuple(target.input_shape)
        self.num_classes: int = int(target.num_classes)
        self._forward: Any = None
        module = unwrap(target).module if target is unwrap(target).base else None
        if module is not None and callable(getattr(module, "eval", None)):
            import torch

            module.eval()

            def forward(x: np.ndarray) -> Prediction:
                with torch.inference_mode():
                    logits = module(torch.from_numpy(x)).double().numpy()
                return Prediction.from_logits(logits, Access.LOGITS)

            self._forward = forward

    async def predict(self, x: np.ndarray) -> Prediction:
        if self._forward is not None:
            out: Prediction = self._forward(x)
            if out.logits is None or out.logits.shape != (x.shape[0], self.num_classes):
                raise TargetError(f"model gave outputs of the wrong shape for a batch of {x.shape[0]}")
            return out
        pred: Prediction = self.target.predict(x)
        return pred

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ready(self) -> bool:
        return True


def load_local(cfg: ModelConfig) -> LocalModel:
    """Load the configured in-process model (``kind: torch`` or ``kind: sklearn``)."""
    assert cfg.path is not None
    if cfg.kind == "torch":
        import torch

        from invguard import models
        from invguard.targets.torch import TorchTarget

        torch.set_num_threads(1)
        module = models.load(cfg.path)
        spec = models.spec_of(module)
        shape = tuple(cfg.input_shape or spec["input_shape"])
        ncls = cfg.num_classes or int(spec["num_classes"])
        return LocalModel(
            TorchTarget(module, input_shape=shape, num_classes=ncls, access="logits", name=cfg.name)
        )
    import pickle
    from pathlib import Path

    from invguard.targets.sklearn import SklearnTarget

    p = Path(cfg.path)
    if not p.exists():
        raise ConfigError(f"model.path: {p} not found")
    try:
        if p.suffix == ".joblib":
            import joblib

            est = joblib.load(p)
        else:
            with open(p, "rb") as f:
                est = pickle.load(f)
    except Exception as e:
        raise ConfigError(f"model.path: {p} is not a pickled/joblib scikit-learn model ({e})") from None
    sk_shape = tuple(cfg.input_shape) if cfg.input_shape else None
    return LocalModel(SklearnTarget(est, input_shape=sk_shape, name=cfg.name))


class UpstreamModel:
    """Forward batches to a model server through a pooled aiohttp session."""

    def __init__(self, cfg: UpstreamConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self._session: Any = None
        self._where = f"upstream POST {redact_url(cfg.url)}"
        self._headers = {"Content-Type": "application/json"}

    async def start(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.cfg.pool_size, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            json_serialize=json.dumps,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ready(self) -> bool:
        return self._session is not None

    def _body(self, x: np.ndarray) -> bytes:
        if self.cfg.preset == "kserve-v2":
            return json.dumps(kserve.request(x, self.cfg.input_name)).encode()
        return json.dumps(instances.request(x)).encode()

    def _extract(self, doc: Any, n: int) -> Any:
        if self.cfg.preset == "instances":
            return instances.predictions(doc)
        return kserve.pick_output(doc, n, self.num_classes, self.cfg.returns, self.cfg.output_name)

    async def predict(self, x: np.ndarray) -> Prediction:
        import aiohttp

        if self._session is None:
            raise UpstreamError("unavailable", "the upstream client is not started")
        where = self._where
        try:
            async with self._session.post(self.cfg.url, data=self._body(x), headers=self._headers) as resp:
                status = resp.status
                raw = await resp.read()
        except TimeoutError:
            raise UpstreamError("timeout", f"{where}: no answer within {self.cfg.timeout:g} s") from None
        except aiohttp.ClientError as e:
            raise UpstreamError("unreachable", f"{where}: {type(e).__name__}") from None
        if status >= 400:
            raise UpstreamError("status", f"{where}: answered HTTP {status}")
        try:
            doc = json.loads(raw)
            out = self._extract(doc, x.shape[0])
            return prediction_from_output(out, self.cfg.returns, x.shape[0], self.num_classes, where)
        except Exception as e:  # any answer that is not a prediction: never a 500
            raise UpstreamError(
                "malformed", f"{where}: the answer is not a valid prediction ({type(e).__name__})"
            ) from None


def build_model(cfg: ModelConfig) -> LocalModel | UpstreamModel:
    if cfg.kind == "proxy":
        assert cfg.upstream is not None and cfg.input_shape is not None and cfg.num_classes is not None
        return UpstreamModel(cfg.upstream, cfg.input_shape, cfg.num_classes)
    return load_local(cfg)
