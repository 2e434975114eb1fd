"""The web front: one static page (``/``) and its script and style (``/static/...``), no build step.

The page renders everything with ``textContent`` (user strings are never parsed as HTML), keeps
the token in ``sessionStorage`` and sends it as an ``Authorization`` header (no cookie, so no
CSRF). Every response carries a strict Content-Security-Policy: scripts, styles and requests
only from this origin, images also from ``blob:`` (the try-it previews), nothing inline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404, "not found")
    return FileResponse(STATIC_DIR / name, media_type=FILES[name], headers=HEADERS)


@router.get("/")
def index() -> FileResponse:
    return _file("index.html")


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204, headers=HEADERS)


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    return _file(name)
