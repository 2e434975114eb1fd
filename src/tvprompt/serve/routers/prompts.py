"""/prompts: list, metadata, download, upload, delete, apply."""

from __future__ import annotations

import io
import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import Response

from ..deps import client_key, context, require_owner
from ..gate import Busy
from ..guard import GuardedRoute
from ..images import decode_image, read_upload_bytes
from ..registry import describe
from ..schemas import ErrorOut, PromptDetail, PromptOut

router = APIRouter(prefix="/prompts", tags=["prompts"], route_class=GuardedRoute)
PromptId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="prompt id")]
# no control characters (PostgreSQL refuses NUL in text); offsets fit any database's integers
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
MAX_OFFSET = 1_000_000_000
ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut},
          413: {"model": ErrorOut}, 429: {"model": ErrorOut}, 503: {"model": ErrorOut}}


@router.get("", response_model=list[PromptOut])
def list_prompts(
    request: Request,
    task: str | None = Query(None, max_length=128, pattern=PRINTABLE, description="exact task name"),
    model: str | None = Query(None, max_length=256, pattern=PRINTABLE,
                              description="a source model id the prompt was trained on"),
    owner: str | None = Query(None, max_length=64, pattern=PRINTABLE),
    name: str | None = Query(None, max_length=64, pattern=PRINTABLE),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> list[dict]:
    rows = context(request).registry.search(task=task, model=model, owner=owner, name=name, limit=limit, offset=offset)
    return [describe(r) for r in rows]


@router.get("/{prompt_id}", response_model=PromptDetail, responses=ERRORS)
def get_prompt(request: Request, prompt_id: PromptId) -> dict:
    registry = context(request).registry
    row = registry.get(prompt_id)
    return describe(row, registry.versions(row))


@router.get(
    "/{prompt_id}/download",
    responses={**ERRORS, 200: {"content": {"application/zip": {}, "image/png": {}}}},
    response_class=Response,
)
def download_prompt(request: Request, prompt_id: PromptId, format: Literal["zip", "png"] = "zip") -> Response:  # noqa: A002
    """The prompt directory as a zip (bit-exact files), or ``?format=png``: the prompt rendered on grey."""
    registry = context(request).registry
    row = registry.get(prompt_id)
    if format == "png":
        from ...imageio import tensor_to_pil

        buf = io.BytesIO()
        tensor_to_pil(registry.load(row).render()).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{row.id}.png"'})
    return Response(
        registry.archive_bytes(row),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.zip"', "X-Content-SHA256": row.sha256},
    )


@router.post("", status_code=201, response_model=PromptDetail, responses=ERRORS)
def upload_prompt(
    request: Request,
    owner: Annotated[str, Depends(require_owner)],
    file: UploadFile = File(..., description="zip of a prompt directory"),
    name: str | None = Form(None, max_length=64, description="registry name (default: the prompt's task)"),
) -> dict:
    """Register a prompt. It is validated exactly like ``VisualPrompt.from_pretrained`` validates a local directory."""
    ctx = context(request)
    data = read_upload_bytes(file, ctx.settings.max_upload_bytes, "upload")
    row = ctx.registry.add_archive(data, owner, name)
    return describe(row, ctx.registry.versions(row))


@router.delete("/{prompt_id}", status_code=204, responses=ERRORS)
def delete_prompt(request: Request, prompt_id: PromptId, owner: Annotated[str, Depends(require_owner)]) -> Response:
    context(request).registry.delete(prompt_id, owner)
    return Response(status_code=204)


@router.post("/{prompt_id}/apply", response_class=Response, responses={**ERRORS, 200: {"content": {"image/png": {}}}})
def apply_prompt(request: Request, prompt_id: PromptId,
                 image: UploadFile = File(..., description="an image file")) -> Response:
    """Prompt one image; returns the H×W PNG that ``tvp apply`` would write for it."""
    import torch

    from ...imageio import tensor_to_pil

    ctx = context(request)
    wait = ctx.apply_limiter.hit(client_key(request))
    if wait > 0:
        raise HTTPException(429, f"rate limit: try again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    data = read_upload_bytes(image, ctx.settings.max_image_bytes, "image")
    prompt = ctx.registry.load(ctx.registry.get(prompt_id))
    try:
        with ctx.apply_gate.slot():  # decoding and prompting cost memory: a bounded number at once
            pixels = decode_image(data, ctx.settings)
            gen = torch.Generator().manual_seed(prompt.config.seed)
            with torch.no_grad():
                out = prompt.apply(pixels[None], generator=gen)[0]
            del pixels
            buf = io.BytesIO()
            tensor_to_pil(out).save(buf, format="PNG")
    except Busy:
        raise HTTPException(503, "the server is busy applying prompts; try again shortly",
                            headers={"Retry-After": "1"}) from None
    return Response(buf.getvalue(), media_type="image/png")
