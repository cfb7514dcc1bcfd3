"""Serve a local causal LM over the OpenAI-compatible completion API (a small reference server).

``openai_app(HFLMTarget(path), model_name="m")`` is a Starlette app with ``POST /v1/completions``
(``logprobs``, ``echo``, ``top_k``, ``seed``) and ``POST /v1/chat/completions`` (``logprobs``,
``top_logprobs``). It answers with everything the model gives: put the guard in front of it to
restrict that. :func:`answer` is the model side of one request, shared with the guard's in-process
text model. Model calls run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from invguard.targets.lm import TokenLogprobs
from invguard.wire.openai import (
    CHAT,
    COMPLETIONS,
    TextRequest,
    WireError,
    chat_response,
    completion_response,
    join,
    parse_request,
)


@dataclass(frozen=True)
class Answer:
    """The model's full answer to one request: per choice the text, the full token view (or None
    when the request asked for no log-probabilities) and the finish reason; token usage."""

    texts: tuple[str, ...]
    views: tuple[TokenLogprobs | None, ...]
    finish: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def answer(target: Any, req: TextRequest) -> Answer:
    """Run ``req`` on a local text target (``HFLMTarget``): echo scoring and/or generation."""
    prompts = [p for p in req.prompts for _ in range(req.n)]
    k = req.top_logprobs
    texts: list[str] = []
    views: list[TokenLogprobs | None] = []
    finish: list[str] = []
    scored = target.score(prompts, top_logprobs=k) if req.echo else None
    prompt_tokens = (
        sum(len(s.tokens) for s in scored)
        if scored is not None
        else sum(target._count_tokens(p) for p in req.prompts)
    )
    completion_tokens = 0
    gens = None
    if req.max_tokens > 0:
        gens = target.generate(
            prompts,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_logprobs=k,
            seed=req.seed,
        )
    for i, p in enumerate(prompts):
        g = gens[i] if gens is not None else None
        view = None
        if g is not None:
            completion_tokens += (
                len(g.logprobs.tokens) if g.logprobs is not None else target._count_tokens(g.text)
            )
        if scored is not None:
            text = p + (g.text if g is not None else "")
            if req.logprobs:
                view = scored[i] if g is None or g.logprobs is None else join(scored[i], g.logprobs)
            finish.append(g.finish_reason if g is not None else "length")
        else:
            assert g is not None
            text = g.text
            view = g.logprobs if req.logprobs else None
            finish.append(g.finish_reason)
        texts.append(text)
        views.append(view)
    return Answer(tuple(texts), tuple(views), tuple(finish), prompt_tokens, completion_tokens)


def encode(req: TextRequest, ans: Answer, model: str, views: Any = None, texts: Any = None) -> dict[str, Any]:
    """The OpenAI response document for an answer (``views``/``texts`` override the answer's)."""
    rid = ("cmpl-" if req.route == COMPLETIONS else "chatcmpl-") + uuid.uuid4().hex[:24]
    fn = completion_response if req.route == COMPLETIONS else chat_response
    return fn(
        rid,
        model,
        int(time.time()),
        texts if texts is not None else ans.texts,
        views if views is not None else ans.views,
        ans.finish,
        ans.usage(),
    )


def openai_app(target: Any, *, model_name: str = "model", max_tokens: int = 1024) -> Any:
    """A Starlette app serving ``target`` (see the module docstring)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    lock = asyncio.Lock()

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    async def handle(request: Request) -> JSONResponse:
        route = request.url.path
        try:
            doc = json.loads(await request.body())
            req = parse_request(route, doc, max_tokens)
        except (ValueError, WireError) as e:
            return error(400, str(e))
        if req.model is not None and req.model != model_name:
            return error(
                404, f"model {req.model!r} not found; this server serves {model_name!r}", "not_found_error"
            )
        async with lock:
            try:
                ans = await asyncio.to_thread(answer, target, req)
            except ValueError as e:  # a bad parameter the target refused
                return error(400, str(e))
        return JSONResponse(encode(req, ans, model_name))

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model"}]})

    return Starlette(
        routes=[
            Route(COMPLETIONS, handle, methods=["POST"]),
            Route(CHAT, handle, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
