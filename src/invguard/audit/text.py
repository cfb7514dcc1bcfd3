"""Language models in the audit: their text splits, their portable form and the probe query.

A language-model target (``target: {kind: hf_lm | openai}``) is attacked by the ``text.*`` attacks on
:class:`invguard.data.text.TextSplits`: the corpus of ``data.text`` split into members (the private
training text), non-members and public documents, with canaries. For invguard's reference LMs
(``model: reference/pydoc-gpt2-micro``) the splits are the reference's own, so the model the audit
trains and the splits the attacks read always agree.

A local model directory travels to the workers as a tar archive (unpacked once per worker host into
a temporary folder named by its digest), so a Dask worker on another machine needs no shared file
system; a directory larger than :data:`MAX_PAYLOAD` is passed by path (the workers must see it).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invguard.core.errors import ConfigError, DataError

MAX_PAYLOAD = 512 * 1024 * 1024  # bytes of a model directory still shipped inside the job


def reference_name(model: str | None) -> str | None:
    """``pydoc-gpt2-micro`` for ``reference/pydoc-gpt2-micro``, else None."""
    if model is None or not model.startswith("reference/"):
        return None
    return model.split("/", 1)[1]


def _reference_data(name: str) -> dict[str, Any]:
    from invguard.models.lm import REFERENCE_LMS

    opts = dict(REFERENCE_LMS[name]["data"])
    return {"corpus": opts.pop("source", "pydoc"), **opts}


def resolve_text_data(text_cfg: Any, target_cfg: Any, *, seed: int) -> Any:
    """The audit's text splits: the reference LM's own for ``model: reference/NAME`` (a ``data.text``
    section must then agree with it), else ``data.text`` (default: the pydoc corpus)."""
    from invguard.audit.config import TextDataConfig
    from invguard.data.text import CanaryFormat, load_text

    ref = reference_name(target_cfg.model)
    if ref is not None:
        want = TextDataConfig.model_validate(_reference_data(ref))
        if text_cfg is not None:
            given = text_cfg.model_dump(exclude_unset=True)
            differ = {
                k: v for k, v in given.items() if k != "seed" and getattr(want, k) != getattr(text_cfg, k)
            }
            if differ:
                raise ConfigError(
                    f"data.text: reference/{ref} is trained on its own corpus and canaries; "
                    f"{', '.join(sorted(differ))} differ from it (leave data.text out, or train your own "
                    "model and give its directory as target.path)"
                )
        text_cfg = want.model_copy(update={"seed": text_cfg.seed if text_cfg is not None else None})
    cfg = text_cfg if text_cfg is not None else TextDataConfig.model_validate({})
    s = cfg.seed if cfg.seed is not None else seed
    try:
        return load_text(
            cfg.corpus,
            seed=s,
            fractions=tuple(cfg.fractions),
            max_documents=cfg.max_documents,
            insertions=tuple(cfg.insertions),
            canaries_per_count=cfg.canaries_per_count,
            canary_format=CanaryFormat(**cfg.canary_format.model_dump()),
        )
    except DataError as e:
        raise DataError(f"data.text: {e}") from None


def _tar(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(folder)), recursive=False)
    return buf.getvalue()


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def resolve_lm_target(
    cfg: Any,
    splits: Any,
    *,
    seed: int,
    cache_dir: Path | None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Any:
    """A language-model target in portable form (:class:`invguard.audit.resolve.ResolvedTarget`)."""
    from invguard.audit.resolve import ResolvedTarget, Secret

    name = cfg.display_name
    common: dict[str, Any] = {"budget": cfg.budget, "token_budget": cfg.token_budget}
    if cfg.kind == "openai":
        opts: dict[str, Any] = {
            **common,
            "url": cfg.url,
            "model": cfg.model_name,
            "api": cfg.api,
            "max_top_logprobs": cfg.max_top_logprobs,
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "max_retry_after": cfg.max_wait,
        }
        if cfg.api_key_env:
            if cfg.api_key_env not in os.environ:
                raise ConfigError(f"target.api_key_env: environment variable {cfg.api_key_env} is not set")
            opts["api_key"] = Secret(os.environ[cfg.api_key_env])  # never printed nor in the digest
        return ResolvedTarget("openai", name, (), 0, None, opts, cfg.access or "logprobs")
    ref = reference_name(cfg.model)
    if ref is not None:
        from invguard.models.lm import reference_lm

        path, ref_splits = reference_lm(ref, seed=splits.seed, cache_dir=cache_dir, progress=progress)
        if ref_splits.digest() != splits.digest():  # pragma: no cover - resolve_text_data makes them agree
            raise ConfigError(f"target.model: reference/{ref} was trained on other splits than the audit's")
    else:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"target.path: {path} is not a Hugging Face model directory (no config.json); a "
                "language model is read from a local directory only, never downloaded"
            )
    path = Path(path).resolve()
    opts = {**common, "path": str(path)}
    payload = None
    if _size(path) <= MAX_PAYLOAD:
        payload = _tar(path)
        opts["path"] = None
        opts["source"] = str(path)
    return ResolvedTarget("hf_lm", name, (), 0, payload, opts, cfg.access or "whitebox")


def _unpacked(payload: bytes) -> Path:
    """The model directory of a tar payload, unpacked once per host (by digest, renamed into place)."""
    digest = hashlib.sha256(payload).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / "invguard-lm"
    final = root / digest
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_lm_target(rt: Any) -> Any:
    """The live text target of a resolved ``hf_lm`` / ``openai`` target."""
    o = rt.options
    if rt.kind == "openai":
        from invguard.targets.openai import OpenAITarget

        return OpenAITarget(
            o["url"],
            model=o["model"],
            api=o["api"],
            access=rt.access or "logprobs",
            budget=o.get("budget"),
            token_budget=o.get("token_budget"),
            api_key=o.get("api_key"),
            max_top_logprobs=o["max_top_logprobs"],
            timeout=o["timeout"],
            retries=o["retries"],
            max_retry_after=o["max_retry_after"],
            name=rt.name,
        )
    from invguard.targets.hf_lm import HFLMTarget

    path = _unpacked(rt.payload) if rt.payload is not None else Path(o["path"])
    target = HFLMTarget(
        path,
        access=rt.access or "whitebox",
        budget=o.get("budget"),
        token_budget=o.get("token_budget"),
        name=rt.name,
    )
    return target


def probe_text(target: Any, splits: Any) -> str:
    """One short generation: an unreachable or broken language model fails here (exit 3)."""
    prompt = next((d[:24] for d in splits.public if d.strip()), "The")
    target.generate([prompt], max_tokens=1, temperature=0.0, seed=0)
    return str(target.describe())
