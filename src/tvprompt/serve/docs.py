"""Interactive API docs served offline, and the bearer-token security scheme in the OpenAPI schema.

FastAPI's default ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN, so they render
blank without internet. The assets come from the ``fastapi-offline`` package (Swagger UI and
ReDoc, MIT) and are served under ``/docs-assets``; only its files are used, not its app class.

The schema declares ``bearer`` (HTTP bearer) on the calls that need a token, and makes it
optional on those that accept one (``apply`` and ``ask`` rate-limit per owner when it is sent),
so Swagger's "Authorize" button works.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from .deps import require_owner

ASSETS_URL = "/docs-assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
SCHEME = "bearer"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)
# calls that work without a token and rate-limit per owner when one is sent
OPTIONAL_TOKEN = {("POST", "/prompts/{prompt_id}/apply"), ("POST", "/prompts/{prompt_id}/ask")}


def assets_dir() -> Path | None:
    """The folder holding the Swagger UI and ReDoc files, or None when ``fastapi-offline`` is missing."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if all((folder / name).is_file() for name in ASSET_FILES) else None


def docs_csp(html: bytes) -> str:
    """A CSP allowing the page's own inline scripts (by hash) and the local assets, nothing else."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _html(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = docs_csp(response.body)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _uses(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def security_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema with the bearer scheme on each operation that reads the token."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "a token from `tvp serve token create` (sent as `Authorization: Bearer <token>`)",
    }
    for route in _api_routes():
        required = _uses(route.dependant, require_owner)
        for method in route.methods:
            op = schema["paths"].get(route.path_format, {}).get(method.lower())
            if op is not None and (required or (method, route.path_format) in OPTIONAL_TOKEN):
                op["security"] = [{SCHEME: []}] if required else [{}, {SCHEME: []}]
    app.openapi_schema = schema
    return schema


def _api_routes() -> list[APIRoute]:
    # the routers' own route lists: how an app stores included routers differs between FastAPI versions
    from .routers import ask, health, jobs, prompts

    return [r for m in (health, prompts, jobs, ask) for r in m.router.routes if isinstance(r, APIRoute)]


def install(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` from local assets (the app is built with ``docs_url=None, redoc_url=None``)."""
    app.openapi = lambda: security_openapi(app)  # type: ignore[method-assign]
    folder = assets_dir()
    if folder is None:  # the API works without docs; say how to get them
        @app.get("/docs", include_in_schema=False)
        def no_docs() -> HTMLResponse:
            return HTMLResponse("API docs need the fastapi-offline package: pip install 'tvprompt[serve]'. "
                                "The schema is at /openapi.json.", status_code=404)
        return

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSET_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(folder / name,
                            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return _html(get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png", swagger_ui_parameters={"persistAuthorization": False},
        ))

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _html(get_redoc_html(
            openapi_url="/openapi.json", title=f"{app.title} - ReDoc", redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False,
        ))
