"""/jobs: submit a training job, follow it, cancel it (owner only)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from ..db import JobRow
from ..deps import context, require_owner
from ..guard import GuardedRoute
from ..schemas import ErrorOut, JobCreate, JobOut

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=GuardedRoute)
JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="job id")]
ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut}}


def job_out(row: JobRow) -> dict:
    return {
        "id": row.id,
        "owner": row.owner,
        "state": row.state,
        "request": json.loads(row.request_json),
        "progress": row.progress,
        "step": row.step,
        "total_steps": row.total_steps,
        "metrics": json.loads(row.metrics_json) if row.metrics_json else None,
        "error": row.error,
        "prompt_id": row.prompt_id,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
    }


@router.post("", status_code=201, response_model=JobOut, responses=ERRORS)
def submit_job(request: Request, body: JobCreate, owner: Annotated[str, Depends(require_owner)]) -> dict:
    """Queue a training run on a dataset manifest that lives under the server's data root."""
    row = context(request).jobs.submit(owner, body.model_dump(exclude_none=True))
    return job_out(row)


@router.get("", response_model=list[JobOut], responses=ERRORS)
def list_jobs(request: Request, owner: Annotated[str, Depends(require_owner)]) -> list[dict]:
    """The caller's jobs, newest first (at most 100)."""
    return [job_out(r) for r in context(request).jobs.list(owner)]


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(request: Request, job_id: JobId, owner: Annotated[str, Depends(require_owner)]) -> dict:
    return job_out(context(request).jobs.get(job_id, owner))


@router.delete("/{job_id}", response_model=JobOut, responses=ERRORS)
def cancel_job(request: Request, job_id: JobId, owner: Annotated[str, Depends(require_owner)]) -> dict:
    """Cancel a queued or running job (its whole process group is killed); finished jobs are returned as they are."""
    return job_out(context(request).jobs.cancel(job_id, owner))
