"""GET /models (the hosted models) and POST /prompts/{id}/ask (their answers with and without a prompt)."""

from __future__ import annotations

import math
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Request, UploadFile

from ..ask import QueueFull, make_question
from ..deps import client_key, context
from ..gate import Busy
from ..guard import GuardedRoute
from ..images import decode_image, read_upload_bytes
from ..schemas import AskOut, ErrorOut, HostedModel

router = APIRouter(tags=["ask"], route_class=GuardedRoute)
PromptId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="prompt id")]
ERRORS = {400: {"model": ErrorOut}, 404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 429: {"model": ErrorOut},
          503: {"model": ErrorOut}}


@router.get("/models", response_model=list[HostedModel])
def hosted_models(request: Request) -> list[dict]:
    """The models this server hosts for ``ask`` (empty: ask is off)."""
    return request.app.state.host.describe()


@router.post("/prompts/{prompt_id}/ask", response_model=AskOut, responses=ERRORS)
def ask(
    request: Request,
    prompt_id: PromptId,
    image: UploadFile = File(..., description="an image file"),
    question: str = Form(..., min_length=1, max_length=500, description="the question the models answer"),
    choices: list[str] | None = Form(
        None, description="answer choices (repeat the field); default: the prompt's task choices"),
) -> dict:
    """Each hosted model's choice for the image without and with the prompt, with its per-choice scores
    (mean log-likelihood per answer token) and their softmax. Rate limited; 503 while the queue is full."""
    ctx = context(request)
    host = request.app.state.host
    wait = host.limiter.hit(client_key(request))
    if wait > 0:
        raise HTTPException(429, f"rate limit: try again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    if not host.adapters:
        raise HTTPException(404, "this server hosts no models: start it with --model ID (or --demo)")
    data = read_upload_bytes(image, ctx.settings.max_image_bytes, "image")
    try:
        with ctx.apply_gate.slot():  # the same bound on concurrent decodes as apply
            pixels = decode_image(data, ctx.settings)
    except Busy:
        raise HTTPException(503, "the server is busy decoding images; try again shortly",
                            headers={"Retry-After": "1"}) from None
    prompt = ctx.registry.load(ctx.registry.get(prompt_id))
    q = make_question(prompt, pixels, question, choices)
    try:
        future = host.submit(q)
    except QueueFull:
        raise HTTPException(503, "the ask queue is full: try again in a few seconds",
                            headers={"Retry-After": "5"}) from None
    try:
        answers = future.result(timeout=ctx.settings.ask_timeout_s)
    except FutureTimeout:
        raise HTTPException(503, "the hosted models did not answer in time: try again later",
                            headers={"Retry-After": "10"}) from None
    return {"prompt_id": prompt_id, "question": q.question, "choices": q.choices, "answers": answers}
