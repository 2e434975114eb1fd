"""/datasets: a token holder's labelled sets for "request a prompt for my task" (owner only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile
from fastapi.responses import Response

from ..datasets import describe_dataset, parse_choices
from ..deps import context, require_owner
from ..guard import GuardedRoute
from ..images import read_upload_bytes
from ..schemas import DatasetOut, ErrorOut

router = APIRouter(prefix="/datasets", tags=["datasets"], route_class=GuardedRoute)
DatasetId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="dataset id")]
ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 413: {"model": ErrorOut}}


@router.post("", status_code=201, response_model=DatasetOut, responses=ERRORS)
def upload_dataset(
    request: Request,
    owner: Annotated[str, Depends(require_owner)],
    file: UploadFile = File(..., description="zip of images with manifest.jsonl, or of one folder per class"),
    name: str = Form(..., max_length=64, description="task name (also the default name of the trained prompt)"),
    instruction: str | None = Form(None, max_length=1000,
                                   description="the question the models are asked; {choices} lists them"),
    choices: str | None = Form(None, max_length=100_000,
                               description="answers, comma-separated or a JSON array (default: the labels found)"),
) -> dict:
    """Upload a small labelled set and its task spec; every image is decoded and checked before anything is kept."""
    ctx = context(request)
    data = read_upload_bytes(file, ctx.settings.max_upload_bytes, "upload")
    return describe_dataset(ctx.datasets.add(data, owner, name, instruction, parse_choices(choices)))


@router.get("", response_model=list[DatasetOut], responses=ERRORS)
def list_datasets(request: Request, owner: Annotated[str, Depends(require_owner)]) -> list[dict]:
    """The caller's datasets, newest first."""
    return [describe_dataset(r) for r in context(request).datasets.list(owner)]


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ERRORS)
def get_dataset(request: Request, dataset_id: DatasetId, owner: Annotated[str, Depends(require_owner)]) -> dict:
    return describe_dataset(context(request).datasets.get(dataset_id, owner))


@router.delete("/{dataset_id}", status_code=204, responses=ERRORS)
def delete_dataset(request: Request, dataset_id: DatasetId, owner: Annotated[str, Depends(require_owner)]) -> Response:
    """Delete the dataset and its images (refused while a queued or running job uses it)."""
    context(request).datasets.delete(dataset_id, owner)
    return Response(status_code=204)
