"""The OpenAI-compatible completion wire format (``/v1/completions``, ``/v1/chat/completions``).

Shared by the client (:class:`invguard.targets.openai.OpenAITarget`), the guard's text routes and
the small server that serves a local LM (:mod:`invguard.models.lm_server`).

- Completions (the legacy API, as served by vLLM, llama.cpp and TGI): ``prompt`` (a string or a
  list), ``max_tokens``, ``temperature``, ``top_k`` (a common extension), ``seed``, ``logprobs`` (the
  number of alternatives per position, 0-20: the chosen token's log-probability is given from 0
  on) and ``echo`` (the prompt's own tokens and log-probabilities come back before the
  continuation; with ``max_tokens: 0`` that scores a text). Each choice's ``logprobs`` holds
  ``tokens``, ``token_logprobs`` (``null`` where not given), ``top_logprobs`` (a mapping per
  position, or ``null``) and ``text_offset``.
- Chat: ``messages`` (``{"role", "content"}``), ``max_tokens`` / ``max_completion_tokens``,
  ``logprobs`` (a boolean) and ``top_logprobs`` (0-20); each choice's ``logprobs.content`` is a list
  of ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}``. A base LM is prompted with the
  messages' contents joined by new lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from invguard.core.access import TextAccess
from invguard.targets.lm import Generation, TokenLogprobs

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
MAX_TOP = 20
MAX_PROMPTS = 256


class WireError(ValueError):
    """A request or response that does not follow the format; the message names the field."""


@dataclass(frozen=True)
class TextRequest:
    """A validated completion or chat request (chat messages already rendered to prompts)."""

    route: str
    model: str | None
    prompts: tuple[str, ...]
    max_tokens: int
    temperature: float
    top_k: int
    top_logprobs: int
    logprobs: bool
    echo: bool
    seed: int | None
    n: int

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


def _int(doc: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = doc.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise WireError(f"{key} must be a whole number in [{lo}, {hi}], got {v!r}")
    return int(v)


def _float(doc: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = doc.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise WireError(f"{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def render_chat(messages: Any) -> str:
    """The prompt a base LM gets for chat ``messages``: their contents, one per line."""
    if not isinstance(messages, list) or not messages:
        raise WireError("messages must be a non-empty list of {role, content} objects")
    parts = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("content"), str)
            or not isinstance(m.get("role"), str)
        ):
            raise WireError(f"messages[{i}] must be an object with string 'role' and 'content'")
        parts.append(m["content"])
    return "\n".join(parts)


def parse_request(route: str, doc: Any, max_tokens_cap: int = 4096) -> TextRequest:
    """Validate a completion (``route == COMPLETIONS``) or chat request body (parsed JSON)."""
    if not isinstance(doc, Mapping):
        raise WireError("the body must be a JSON object")
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise WireError(f"model must be a string, got {type(model).__name__}")
    seed = doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise WireError(f"seed must be a whole number, got {seed!r}")
    n = _int(doc, "n", 1, 1, 16)
    temperature = _float(doc, "temperature", 1.0, 0.0, 2.0)
    top_k = _int(doc, "top_k", 0, -1, 100_000)
    top_k = max(0, top_k)  # -1 means "off" in vLLM
    if route == COMPLETIONS:
        prompt = doc.get("prompt")
        if isinstance(prompt, str):
            prompts: tuple[str, ...] = (prompt,)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = tuple(prompt)
        else:
            raise WireError("prompt must be a string or a non-empty list of strings")
        if len(prompts) > MAX_PROMPTS:
            raise WireError(f"prompt holds {len(prompts)} prompts; at most {MAX_PROMPTS} per request")
        echo = doc.get("echo", False)
        if not isinstance(echo, bool):
            raise WireError(f"echo must be true or false, got {echo!r}")
        lp = doc.get("logprobs")
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int) or not 0 <= lp <= MAX_TOP):
            raise WireError(f"logprobs must be a whole number in [0, {MAX_TOP}] or null, got {lp!r}")
        max_tokens = _int(doc, "max_tokens", 16, 0, max_tokens_cap)
        if max_tokens == 0 and not echo:
            raise WireError("max_tokens may be 0 only with echo (scoring the prompt)")
        return TextRequest(
            COMPLETIONS,
            model,
            prompts,
            max_tokens,
            temperature,
            top_k,
            0 if lp is None else int(lp),
            lp is not None,
            echo,
            seed,
            n,
        )
    if route != CHAT:
        raise WireError(f"unknown route {route!r}")
    prompt = render_chat(doc.get("messages"))
    lp_flag = doc.get("logprobs", False)
    if not isinstance(lp_flag, bool):
        raise WireError(f"logprobs must be true or false for chat, got {lp_flag!r}")
    top = _int(doc, "top_logprobs", 0, 0, MAX_TOP)
    if top and not lp_flag:
        raise WireError("top_logprobs needs logprobs: true")
    key = "max_completion_tokens" if doc.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(doc, key, 16, 1, max_tokens_cap)
    return TextRequest(CHAT, model, (prompt,), max_tokens, temperature, top_k, top, lp_flag, False, seed, n)


def request_body(req: TextRequest, model: str) -> dict[str, Any]:
    """The JSON body a client sends for ``req``."""
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "temperature": req.temperature}
    if req.top_k:
        body["top_k"] = req.top_k
    if req.seed is not None:
        body["seed"] = req.seed
    if req.n != 1:
        body["n"] = req.n
    if req.route == COMPLETIONS:
        body["prompt"] = list(req.prompts) if len(req.prompts) > 1 else req.prompts[0]
        if req.logprobs:
            body["logprobs"] = req.top_logprobs
        if req.echo:
            body["echo"] = True
    else:
        body["messages"] = [{"role": "user", "content": req.prompts[0]}]
        if req.logprobs:
            body["logprobs"] = True
            if req.top_logprobs:
                body["top_logprobs"] = req.top_logprobs
    return body


# ----------------------------------------------------------------------------------- responses


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def completion_logprobs(tl: TokenLogprobs, base_offset: int = 0) -> dict[str, Any]:
    return {
        "tokens": list(tl.tokens),
        "token_logprobs": [_num(v) for v in tl.logprobs],
        "top_logprobs": None if tl.top is None else [dict(t) if t else None for t in tl.top],
        "text_offset": [base_offset + o for o in tl.offsets],
    }


def join(a: TokenLogprobs, b: TokenLogprobs) -> TokenLogprobs:
    """``a`` then ``b`` as one token view (an echoed prompt and its continuation)."""
    n = len(a.text)
    return TokenLogprobs(
        text=a.text + b.text,
        tokens=a.tokens + b.tokens,
        offsets=a.offsets + tuple(n + o for o in b.offsets),
        logprobs=np.concatenate([a.logprobs, b.logprobs]),
        top=None if a.top is None or b.top is None else a.top + b.top,
        access=min(a.access, b.access),
    )


def completion_response(
    rid: str,
    model: str,
    created: int,
    texts: Sequence[str],
    views: Sequence[TokenLogprobs | None],
    finish: Sequence[str],
    usage: Mapping[str, int],
) -> dict[str, Any]:
    choices = []
    for i, (t, v, f) in enumerate(zip(texts, views, finish, strict=True)):
        choices.append(
            {
                "index": i,
                "text": t,
                "logprobs": None if v is None else completion_logprobs(v),
                "finish_reason": f,
            }
        )
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": dict(usage),
    }


def chat_response(
    rid: str,
    model: str,
    created: int,
    texts: Sequence[str],
    views: Sequence[TokenLogprobs | None],
    finish: Sequence[str],
    usage: Mapping[str, int],
) -> dict[str, Any]:
    choices = []
    for i, (t, v, f) in enumerate(zip(texts, views, finish, strict=True)):
        lp = None
        if v is not None:
            lp = {
                "content": [
                    {
                        "token": tok,
                        "logprob": _num(val),
                        "bytes": list(tok.encode()),
                        "top_logprobs": [{"token": a, "logprob": b} for a, b in (alt or {}).items()],
                    }
                    for tok, val, alt in zip(
                        v.tokens, v.logprobs, v.top or [None] * len(v.tokens), strict=True
                    )
                ]
            }
        choices.append(
            {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": lp, "finish_reason": f}
        )
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": dict(usage),
    }


def _view_completion(lp: Any, text: str, access: TextAccess) -> TokenLogprobs:
    tokens = lp["tokens"]
    vals = lp["token_logprobs"]
    tops = lp.get("top_logprobs")
    offs = lp.get("text_offset")
    if not isinstance(tokens, list) or not isinstance(vals, list) or len(vals) != len(tokens):
        raise WireError("logprobs.tokens and logprobs.token_logprobs must be lists of one length")
    if offs is None:
        offs, at = [], 0
        for t in tokens:
            offs.append(at)
            at += len(t)
    if not isinstance(offs, list) or len(offs) != len(tokens):
        raise WireError("logprobs.text_offset must be a list with one offset per token")
    base = int(offs[0]) if offs else 0
    top = None
    if tops is not None:
        if not isinstance(tops, list) or len(tops) != len(tokens):
            raise WireError("logprobs.top_logprobs must be a list with one entry per token")
        top = tuple({str(k): float(v) for k, v in (t or {}).items()} for t in tops)
    return TokenLogprobs(
        text=text,
        tokens=tuple(str(t) for t in tokens),
        offsets=tuple(int(o) - base for o in offs),
        logprobs=np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64),
        top=top,
        access=access,
    )


def _view_chat(lp: Any, text: str, access: TextAccess) -> TokenLogprobs:
    content = lp["content"]
    if not isinstance(content, list):
        raise WireError("logprobs.content must be a list")
    tokens, vals, top, offs, at = [], [], [], [], 0
    for item in content:
        tok = str(item["token"])
        tokens.append(tok)
        v = item.get("logprob")
        vals.append(np.nan if v is None else float(v))
        top.append({str(a["token"]): float(a["logprob"]) for a in item.get("top_logprobs") or []})
        offs.append(at)
        at += len(tok)
    return TokenLogprobs(
        text=text,
        tokens=tuple(tokens),
        offsets=tuple(offs),
        logprobs=np.array(vals, dtype=np.float64),
        top=tuple(top),
        access=access,
    )


def parse_response(
    route: str, doc: Any, expected: int, access: TextAccess
) -> list[tuple[str, TokenLogprobs | None, str]]:
    """``(text, token view or None, finish_reason)`` per choice, in index order; WireError (naming
    the field) when the answer does not follow the format or has the wrong number of choices."""
    try:
        choices = doc["choices"]
        if not isinstance(choices, list):
            raise WireError("choices must be a list")
        if len(choices) != expected:
            raise WireError(f"expected {expected} choices, got {len(choices)}")
        out = []
        for c in sorted(choices, key=lambda c: int(c.get("index", 0))):
            if route == COMPLETIONS:
                text = c["text"]
                lp = c.get("logprobs")
                view = None if lp is None else _view_completion(lp, text, access)
            else:
                text = c["message"]["content"]
                lp = c.get("logprobs")
                view = None if lp is None else _view_chat(lp, text, access)
            if not isinstance(text, str):
                raise WireError("a choice's text must be a string")
            out.append((text, view, str(c.get("finish_reason") or "length")))
        return out
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise WireError(f"missing or bad field {e}") from None


def generations(
    prompts: Sequence[str], n: int, parsed: Sequence[tuple[str, TokenLogprobs | None, str]]
) -> list[Generation]:
    """Choices back to :class:`Generation` objects (choice ``i`` answers prompt ``i // n``)."""
    return [
        Generation(prompt=prompts[i // n], text=t, logprobs=v, finish_reason=f)
        for i, (t, v, f) in enumerate(parsed)
    ]
