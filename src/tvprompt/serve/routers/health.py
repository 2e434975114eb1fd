"""GET /health: liveness and version."""

from __future__ import annotations

from fastapi import APIRouter

from ... import __version__
from ..guard import GuardedRoute

router = APIRouter(tags=["health"], route_class=GuardedRoute)


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
