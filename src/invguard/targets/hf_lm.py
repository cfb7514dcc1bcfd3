"""Any local Hugging Face causal LM as a text target (white-box: weights and gradients too).

``HFLMTarget("path/to/model-dir")`` loads ``AutoModelForCausalLM`` and its tokenizer from a local
directory only (``local_files_only``: never a hub download). Texts are scored after the tokenizer's
BOS token when it has one (so the first token is scored too); texts longer than the model's
context are scored in overlapping windows (half a context of overlap). Generation samples with a
seeded ``torch.Generator`` (top-k, temperature; ``temperature=0`` is greedy) and returns the model's
own (untempered) log-probabilities of the sampled tokens where access allows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invguard.core.access import TextAccess
from invguard.core.errors import AccessError, ConfigError
from invguard.targets.lm import BaseTextTarget, Generation, TokenLogprobs


def _segments(n: int, m: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, keep_from)`` covering ``n`` tokens with a context of ``m``: the
    predictions for positions ``keep_from .. end-1`` are taken from window ``start .. end``."""
    segs = [(0, min(n, m), 1)]
    while segs[-1][1] < n:
        prev_end = segs[-1][1]
        start = prev_end - m // 2
        segs.append((start, min(n, start + m), prev_end))
    return segs


class HFLMTarget(BaseTextTarget):
    """A local causal LM. ``access`` may be lowered (``"logprobs"``, ``"topk_logprobs"``, ``"text"``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        access: TextAccess | str = TextAccess.WHITEBOX,
        budget: int | None = None,
        token_budget: int | None = None,
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        from invguard.models.lm import load_lm

        model, tok = load_lm(path)
        self._init(model, tok, access, budget, token_budget, batch_size, name or str(path))
        self.path: Path | None = Path(path)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        access: TextAccess | str = TextAccess.WHITEBOX,
        budget: int | None = None,
        token_budget: int | None = None,
        batch_size: int = 64,
        name: str = "causal LM",
    ) -> HFLMTarget:
        """Wrap an already loaded ``transformers`` causal LM and its tokenizer."""
        self: HFLMTarget = cls.__new__(cls)
        self._init(model, tokenizer, access, budget, token_budget, batch_size, name)
        self.path = None
        return self

    def _init(
        self, model: Any, tok: Any, access: Any, budget: Any, token_budget: Any, batch_size: int, name: str
    ) -> None:
        super().__init__(access=access, budget=budget, token_budget=token_budget, name=name)
        model.eval()
        self.model = model
        self.tokenizer = tok
        self.batch_size = max(1, int(batch_size))
        self.context = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)
        self._bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self._eos = tok.eos_token_id
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else (self._eos or 0)
        self._vocab = [tok.convert_ids_to_tokens(i) for i in range(len(tok))]

    def describe(self) -> str:
        return f"{self.access.name} (local causal LM {self.name})"

    # ------------------------------------------------------------------ tokens
    def _ids(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        ids = [([self._bos] if self._bos is not None else []) + list(x) for x in enc["input_ids"]]
        offs = [[int(a) for a, _ in o] for o in enc["offset_mapping"]]
        return ids, offs

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_id(self, piece: str) -> int:
        """The id of ``piece`` when the tokenizer encodes it as exactly one token (else ConfigError)."""
        ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(
                f"{self.name}: {piece!r} is not a single token of this tokenizer ({len(ids)} tokens)"
            )
        return int(ids[0])

    def per_character(self, prefix: str, alphabet: str, probe: str) -> bool:
        """Whether each character of ``alphabet`` is one token and ``prefix + probe`` tokenises as
        the prefix's tokens followed by one token per character (so candidates can be enumerated
        one character at a time)."""
        try:
            ids = {c: self.token_id(c) for c in alphabet}
        except ConfigError:
            return False
        whole = self.tokenizer(prefix + probe, add_special_tokens=False)["input_ids"]
        parts = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] + [ids[c] for c in probe]
        return bool(whole == parts)

    # ------------------------------------------------------------------ forward passes
    def _forward(self, rows: list[list[int]], last_only: bool = False) -> Any:
        """Log-softmax ``(n, L, V)`` of right-padded rows (float32); ``last_only``: rows of one
        length, only the last position ``(n, 1, V)``."""
        import torch

        if last_only:
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor(rows, dtype=torch.long), logits_to_keep=1).logits
            return torch.log_softmax(logits[:, -1:].float(), dim=-1)

        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=x, attention_mask=mask).logits
        return torch.log_softmax(logits.float(), dim=-1)

    def _token_logprobs(
        self, ids: list[list[int]], k: int
    ) -> list[tuple[np.ndarray, list[dict[int, float]]]]:
        """Per text: the log-probability of each token after the first, and the top-``k`` ids."""
        import torch

        jobs = []  # (text index, start, end, keep_from)
        for t, row in enumerate(ids):
            for s, e, keep in _segments(len(row), self.context):
                jobs.append((t, s, e, keep))
        out_lp = [np.full(len(r), np.nan) for r in ids]
        out_top: list[list[dict[int, float]]] = [[{} for _ in r] for r in ids]
        jobs.sort(key=lambda j: j[2] - j[1])
        for b in range(0, len(jobs), self.batch_size):
            chunk = jobs[b : b + self.batch_size]
            lsm = self._forward([ids[t][s:e] for t, s, e, _ in chunk])
            for j_row, (t, s, e, keep) in enumerate(chunk):
                tgt = torch.tensor(ids[t][keep:e], dtype=torch.long)
                pred = lsm[j_row, keep - 1 - s : e - 1 - s]  # position p predicts token p + 1
                out_lp[t][keep:e] = pred.gather(1, tgt[:, None])[:, 0].double().numpy()
                if k:
                    vals, idx = pred.topk(k, dim=-1)
                    for j in range(pred.shape[0]):
                        out_top[t][keep + j] = dict(zip(idx[j].tolist(), vals[j].tolist(), strict=True))
        return [(lp, top) for lp, top in zip(out_lp, out_top, strict=True)]

    def _named(self, top: Mapping[int, float]) -> dict[str, float]:
        return {self.tokenizer.decode([i]): v for i, v in top.items()}

    def _score(self, texts: list[str], top_logprobs: int) -> list[TokenLogprobs]:
        from invguard.policies.text import reveal

        ids, offs = self._ids(texts)
        res = self._token_logprobs(ids, top_logprobs)
        shift = 1 if self._bos is not None else 0
        out = []
        for text, row, off, (lp, top) in zip(texts, ids, offs, res, strict=True):
            toks = tuple(self.tokenizer.decode([i]) for i in row[shift:])
            full = TokenLogprobs(
                text=text,
                tokens=toks,
                offsets=tuple(off),
                logprobs=lp[shift:],
                top=tuple(self._named(t) for t in top[shift:]),
                access=TextAccess.LOGPROBS,
            )
            out.append(reveal(full, self.access, top_logprobs))
        return out

    def next_token_logprobs(self, contexts: Sequence[str], choices: Sequence[str]) -> np.ndarray:
        """``(len(contexts), len(choices))`` log-probabilities of each single-token choice right after
        each context (a context longer than the model's window keeps its last tokens). Needs
        LOGPROBS; counts one query per context and one token per choice."""
        if self.access < TextAccess.LOGPROBS:
            raise AccessError(f"next-token distributions need LOGPROBS; this target grants {self.describe()}")
        ctx = self._texts(contexts, "contexts", self.name)
        cid = [self.token_id(c) for c in choices]
        self.charge(len(ctx), len(ctx) * len(cid))
        ids, _ = self._ids(ctx)
        ids = [r[-self.context :] for r in ids]
        out = np.empty((len(ids), len(cid)), dtype=np.float64)
        import torch

        sel = torch.tensor(cid, dtype=torch.long)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(ids):
            groups.setdefault(len(r), []).append(i)
        for members in groups.values():
            for b in range(0, len(members), self.batch_size * 4):
                chunk = members[b : b + self.batch_size * 4]
                rows = [ids[i] for i in chunk]
                lsm = self._shared_prefix_last(rows)
                if lsm is None:
                    lsm = self._forward(rows, last_only=True)[:, -1]
                out[chunk] = lsm[:, sel].double().numpy()
        return out

    def _shared_prefix_last(self, rows: list[list[int]]) -> Any:
        """Last-position log-softmax of equal-length ``rows`` sharing a token prefix: the prefix runs
        once and its key/value cache is repeated for the rows' suffixes (a candidate tree shares its
        canary prefix). ``None`` when there is no shared prefix or the model's cache cannot be
        repeated (the caller then runs the rows whole)."""
        import torch

        first = rows[0]
        n = len(first) - 1  # at least the last token is run per row
        for r in rows[1:]:
            while n and r[:n] != first[:n]:
                n -= 1
        if n < 2 or len(rows) < 2:
            return None
        try:
            with torch.no_grad():
                pre = self.model(input_ids=torch.tensor([first[:n]], dtype=torch.long), use_cache=True)
                cache = pre.past_key_values
                cache.batch_repeat_interleave(len(rows))
                suffix = torch.tensor([r[n:] for r in rows], dtype=torch.long)
                logits = self.model(
                    input_ids=suffix, past_key_values=cache, use_cache=True, logits_to_keep=1
                ).logits
        except (AttributeError, TypeError, RuntimeError):
            return None
        return torch.log_softmax(logits[:, -1].float(), dim=-1)

    # ------------------------------------------------------------------ generation
    def _generate(
        self,
        prompts: list[str],
        *,
        max_tokens: int,
        temperature: float,
        top_k: int,
        top_logprobs: int,
        seed: int | None,
    ) -> list[Generation]:
        import torch

        from invguard.policies.text import reveal

        ids, _ = self._ids(prompts)
        gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(ids):
            groups.setdefault(len(r), []).append(i)
        results: list[Generation | None] = [None] * len(prompts)
        for length in sorted(groups):
            members = groups[length]
            for b in range(0, len(members), self.batch_size):
                chunk = members[b : b + self.batch_size]
                steps = min(max_tokens, max(0, self.context - length))
                toks, lps, tops, stopped = self._sample(
                    [ids[i] for i in chunk], steps, temperature, top_k, top_logprobs, gen
                )
                for j, i in enumerate(chunk):
                    row = toks[j]
                    pieces = [self.tokenizer.decode([t]) for t in row]
                    text = self.tokenizer.decode(row)
                    offsets, at = [], 0
                    for p in pieces:
                        offsets.append(at)
                        at += len(p)
                    tl = TokenLogprobs(
                        text=text,
                        tokens=tuple(pieces),
                        offsets=tuple(offsets),
                        logprobs=np.asarray(lps[j], dtype=np.float64),
                        top=tuple(self._named(t) for t in tops[j]),
                        access=TextAccess.LOGPROBS,
                    )
                    shown = reveal(tl, self.access, top_logprobs)
                    results[i] = Generation(
                        prompt=prompts[i],
                        text=text,
                        logprobs=None if self.access < TextAccess.TOPK_LOGPROBS else shown,
                        finish_reason="stop" if stopped[j] else "length",
                    )
        return [g for g in results if g is not None]

    def _sample(
        self, rows: list[list[int]], steps: int, temperature: float, top_k: int, k_top: int, gen: Any
    ) -> tuple[list[list[int]], list[list[float]], list[list[dict[int, float]]], list[bool]]:
        import torch

        n = len(rows)
        x = torch.tensor(rows, dtype=torch.long)
        toks: list[list[int]] = [[] for _ in range(n)]
        lps: list[list[float]] = [[] for _ in range(n)]
        tops: list[list[dict[int, float]]] = [[] for _ in range(n)]
        done = [False] * n
        past = None
        inp = x
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            # transformers 5 renames past_key_values; the old name works in 4.x and 5.x
            warnings.simplefilter("ignore", FutureWarning)
            for _ in range(steps):
                out = self.model(input_ids=inp, past_key_values=past, use_cache=True)
                past = out.past_key_values
                lsm = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
                if temperature == 0:
                    nxt = lsm.argmax(dim=-1)
                else:
                    z = lsm / temperature
                    if top_k:
                        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
                        z = z.masked_fill(z < kth, -math.inf)
                    nxt = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=gen)[:, 0]
                chosen = lsm.gather(1, nxt[:, None])[:, 0]
                if k_top:
                    vals, idx = lsm.topk(k_top, dim=-1)
                for j in range(n):
                    if done[j]:
                        continue
                    t = int(nxt[j])
                    if t == self._eos:
                        done[j] = True
                        continue
                    toks[j].append(t)
                    lps[j].append(float(chosen[j]))
                    tops[j].append(dict(zip(idx[j].tolist(), vals[j].tolist(), strict=True)) if k_top else {})
                if all(done):
                    break
                inp = nxt[:, None]
        return toks, lps, tops, done

    # ------------------------------------------------------------------ white box
    def token_gradients(self, text: str) -> tuple[list[str], np.ndarray]:
        """Gradient of the text's mean token loss with respect to its input embeddings:
        ``(tokens, gradients of shape (n_tokens, embedding_dim))``. Needs WHITEBOX."""
        import torch

        if self.access < TextAccess.WHITEBOX:
            raise AccessError(f"gradients need WHITEBOX; this target grants {self.describe()}")
        ids, _ = self._ids([text])
        self.charge(1, len(ids[0]))
        x = torch.tensor(ids[:1], dtype=torch.long)[:, -self.context :]
        emb = self.model.get_input_embeddings()(x).detach().requires_grad_(True)
        loss = self.model(inputs_embeds=emb, labels=x).loss
        (grad,) = torch.autograd.grad(loss, emb)
        toks = [self.tokenizer.decode([i]) for i in x[0].tolist()]
        return toks, grad[0].double().numpy()
