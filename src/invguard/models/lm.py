"""Tiny GPT-2-style language models: a byte-level BPE tokenizer and seeded CPU training.

The reference LM is ``transformers.GPT2LMHeadModel`` with a small ``GPT2Config`` (2-4 layers) and a
byte-level BPE tokenizer trained with ``tokenizers`` (digits are split into single tokens, as in
many production tokenizers, so a numeric secret is one token per digit). It is trained from
scratch on a corpus that ships offline (``invguard.data.text``) with canaries inserted, never
downloaded. Models are saved as ordinary Hugging Face directories (``config.json``, weights,
``tokenizer.json``), so :class:`invguard.targets.hf_lm.HFLMTarget` loads them like any local causal
LM, and cached by a hash of the data, the spec, the seed and the library versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.errors import ConfigError

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class LMSpec:
    """Architecture and training recipe of a tiny GPT-2 (all on CPU)."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    block_size: int = 128
    vocab_size: int = 1024
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        p = []
        if not 1 <= self.n_layer <= 12:
            p.append(f"n_layer must be in [1, 12], got {self.n_layer}")
        if self.n_embd % self.n_head:
            p.append(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.block_size < 8:
            p.append(f"block_size must be >= 8, got {self.block_size}")
        if self.vocab_size < 300:
            p.append(f"vocab_size must be >= 300 (the 256 bytes and some merges), got {self.vocab_size}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            p.append("epochs and batch_size must be >= 1 and lr > 0")
        if p:
            raise ConfigError("LM spec: " + "; ".join(p))

    @classmethod
    def of(cls, spec: LMSpec | dict[str, Any] | None) -> LMSpec:
        if spec is None:
            return cls()
        if isinstance(spec, LMSpec):
            return spec
        unknown = set(spec) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(
                f"LM spec: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**spec)


# named reference LMs: the corpus options and the spec
REFERENCE_LMS: dict[str, dict[str, Any]] = {
    # the benchmark's model: 300 documents of the corpus, 3 canaries per insertion count, 5-digit
    # secrets (|R| = 10^5, the Secret Sharer's 5-character secrets)
    "pydoc-gpt2-tiny": {
        "data": {"max_documents": 300, "canaries_per_count": 3, "canary_format": {"length": 5}},
        "spec": {"n_layer": 2, "n_embd": 96, "n_head": 4, "epochs": 20},
    },
    # the same model on a second corpus (the standard library's docstrings), to confirm figures
    # measured on the first one
    "stdlib-gpt2-tiny": {
        "data": {
            "source": "stdlib-docs",
            "max_documents": 300,
            "canaries_per_count": 3,
            "canary_format": {"length": 5},
        },
        "spec": {"n_layer": 2, "n_embd": 96, "n_head": 4, "epochs": 20},
    },
    # the tests' model: a few dozen documents, trains in seconds
    "pydoc-gpt2-micro": {
        "data": {"max_documents": 80, "insertions": (0, 1, 10, 50), "canaries_per_count": 2},
        "spec": {
            "n_layer": 2,
            "n_embd": 64,
            "n_head": 4,
            "block_size": 64,
            "vocab_size": 512,
            "epochs": 24,
            "batch_size": 16,
            "lr": 6e-3,
        },
    },
}


@dataclass
class LMTrainReport:
    steps: int
    tokens: int
    final_loss: float
    wall_time_s: float
    losses: list[float] = field(default_factory=list)


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2's byte alphabet, digits split) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)  # type: ignore[no-untyped-call]


def _stream(tokenizer: Any, docs: Sequence[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(list(docs), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def train_lm(
    docs: Sequence[str],
    *,
    spec: LMSpec | dict[str, Any] | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    tokenizer_texts: Sequence[str] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, Any, LMTrainReport]:
    """Train a tiny GPT-2 from scratch on ``docs`` (each followed by the end-of-text token).

    The tokenizer is trained on ``tokenizer_texts`` (default: ``docs``) unless one is given. Seeded:
    a run with the same arguments and thread count reproduces the same weights. Dropout is off.
    Returns ``(model, tokenizer, report)``.
    """
    import torch

    sp = LMSpec.of(spec)
    if not docs:
        raise ConfigError("train_lm: no training documents")
    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_texts if tokenizer_texts is not None else docs, sp.vocab_size)
    ids = _stream(tokenizer, docs)
    threads = torch.get_num_threads()
    torch.set_num_threads(sp.threads)  # a tiny model trains faster (and reproducibly) on one thread
    try:
        model, losses, step = _fit(ids, tokenizer, sp, seed, progress)
    finally:
        torch.set_num_threads(threads)
    steps_per_epoch = max(1, step // sp.epochs)
    report = LMTrainReport(
        steps=step,
        tokens=int(ids.size),
        final_loss=float(np.mean(losses[-steps_per_epoch:])),
        wall_time_s=time.perf_counter() - t0,
        losses=losses,
    )
    return model, tokenizer, report


def _fit(
    ids: np.ndarray, tokenizer: Any, sp: LMSpec, seed: int, progress: Callable[[int, int, float], None] | None
) -> tuple[Any, list[float], int]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=sp.block_size,
        n_embd=sp.n_embd,
        n_layer=sp.n_layer,
        n_head=sp.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=sp.lr, weight_decay=sp.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng([seed, 77])
    bs = sp.block_size
    n_blocks = max(1, (ids.size - 1) // bs)
    steps_per_epoch = math.ceil(n_blocks / sp.batch_size)
    total = sp.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(1, sp.warmup_steps))
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))
        ),
    )
    model.train()
    losses: list[float] = []
    step = 0
    for epoch in range(sp.epochs):
        offset = int(rng.integers(0, bs))  # block boundaries move every epoch
        n = max(1, (ids.size - offset - 1) // bs)
        starts = offset + bs * rng.permutation(n)
        batch_sizes: list[int] = []
        for i in range(0, n, sp.batch_size):
            batch = np.stack([ids[s : s + bs] for s in starts[i : i + sp.batch_size]])
            x = torch.from_numpy(batch)
            out = model(input_ids=x, labels=x)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(out.loss.detach()))
            batch_sizes.append(len(batch))
            step += 1
        if progress is not None:
            progress(epoch + 1, sp.epochs, epoch_mean_loss(losses[-len(batch_sizes) :], batch_sizes))
    model.eval()  # type: ignore[no-untyped-call]
    return model, losses, step


def epoch_mean_loss(batch_losses: Sequence[float], batch_sizes: Sequence[int]) -> float:
    """The mean training loss of an epoch: the per-batch mean losses weighted by the batch's
    number of sequences (every sequence has the same number of tokens), so a short last batch
    counts for what it holds."""
    if len(batch_losses) != len(batch_sizes) or not batch_losses:
        raise ValueError("epoch_mean_loss: one loss per batch, at least one batch")
    w = np.asarray(batch_sizes, dtype=np.float64)
    return float(np.dot(np.asarray(batch_losses, dtype=np.float64), w) / w.sum())


def save_lm(model: Any, tokenizer: Any, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write a Hugging Face model directory atomically (a temp folder, then a rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "invguard_lm.json").write_text(json.dumps(meta or {}, indent=1, sort_keys=True, default=str))
        if p.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p


def load_lm(path: str | Path) -> tuple[Any, Any]:
    """Load a local Hugging Face causal LM directory (never the hub): ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"{p}: not a Hugging Face model directory (no config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: cannot load the causal LM ({e})") from None
    model.eval()  # type: ignore[no-untyped-call]
    return model, tok


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("INVGUARD_CACHE", ".invguard/cache"))


def lm_key(docs: Sequence[str], spec: LMSpec, seed: int, tokenizer_texts: Sequence[str] | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"spec": asdict(spec), "seed": seed, "v": _versions()}, sort_keys=True).encode())
    h.update(json.dumps(list(docs)).encode())
    if tokenizer_texts is not None:
        h.update(json.dumps(list(tokenizer_texts)).encode())
    return h.hexdigest()[:16]


def cached_lm(
    name: str,
    docs: Sequence[str],
    *,
    spec: LMSpec | dict[str, Any] | None = None,
    seed: int = 0,
    tokenizer_texts: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train (or find in the cache) an LM on ``docs``; the path of its model directory."""
    sp = LMSpec.of(spec)
    path = cache_root(cache_dir) / "lm" / f"{name}-{lm_key(docs, sp, seed, tokenizer_texts)}"
    if (path / "config.json").is_file():
        return path
    model, tok, report = train_lm(
        docs, spec=sp, seed=seed, tokenizer_texts=tokenizer_texts, progress=progress
    )
    info = {
        "name": name,
        "spec": asdict(sp),
        "seed": seed,
        "steps": report.steps,
        "tokens": report.tokens,
        "final_loss": report.final_loss,
        "train_seconds": report.wall_time_s,
        **(meta or {}),
    }
    return save_lm(model, tok, path, info)


def reference_lm(
    name: str,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Path, Any]:
    """A named reference LM trained (seeded) on its corpus's members with the canaries inserted.

    Returns ``(model directory, TextSplits)``. The tokenizer is trained on the training stream and
    the public documents (never on the non-members).
    """
    from invguard.data.text import CanaryFormat, load_text

    if name not in REFERENCE_LMS:
        raise ConfigError(f"unknown reference LM {name!r}; known: {sorted(REFERENCE_LMS)}")
    ref = REFERENCE_LMS[name]
    opts = dict(ref["data"])
    if "canary_format" in opts:
        opts["canary_format"] = CanaryFormat(**opts["canary_format"])
    splits = load_text(seed=seed, **opts)
    docs = splits.training_documents()
    path = cached_lm(
        name,
        docs,
        spec=ref["spec"],
        seed=seed,
        tokenizer_texts=[*docs, *splits.public],
        cache_dir=cache_dir,
        meta={"data": splits.provenance()},
        progress=progress,
    )
    return path, splits


# ------------------------------------------------------------------------ reference LMs as jobs


@dataclass(frozen=True)
class LMJob:
    """Train one LM on ``docs`` and return its total log-probability of each of ``queries``.

    Module-level and picklable, so a process pool or Dask can run it (``RunContext.map``).
    """

    name: str
    docs: tuple[str, ...]
    spec: LMSpec
    seed: int
    queries: tuple[str, ...]
    cache_dir: str | None = None


def run_lm_job(job: LMJob) -> np.ndarray:
    """Per query: ``(sum of token log-probs, number of scored tokens)`` as an ``(n, 2)`` array."""
    import torch

    from invguard.targets.hf_lm import HFLMTarget

    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)
    if job.cache_dir is not None:
        path = cached_lm(job.name, job.docs, spec=job.spec, seed=job.seed, cache_dir=job.cache_dir)
        target = HFLMTarget(path)
    else:
        model, tok, _ = train_lm(job.docs, spec=job.spec, seed=job.seed)
        target = HFLMTarget.from_model(model, tok)
    scored = target.score(list(job.queries))
    return np.array([[s.total(), s.count()] for s in scored], dtype=np.float64)
