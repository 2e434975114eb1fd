"""The FastAPI application: ``create_app(settings)``; resources are opened in ``lifespan``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import TvpError
from .datasets import DatasetLimits, DatasetStore
from .front import open_host
from .gate import Gate
from .guard import RequestGuard
from .jobs import JobRunner
from .ratelimit import RateLimiter
from .registry import Forbidden, NotFound, Registry
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Everything a request handler may use; built in ``lifespan``, reached as ``request.app.state.ctx``."""

    settings: Settings
    sessions: sessionmaker
    registry: Registry
    jobs: JobRunner
    apply_limiter: RateLimiter
    apply_gate: Gate
    datasets: DatasetStore


def status_for(error: TvpError) -> int:
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Forbidden):
        return 403
    return 400 if error.exit_code == 1 else 422


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Nothing is opened until the app starts (``lifespan``)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .db import open_engine, session_factory
        from .store import PromptStore

        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        engine = open_engine(settings.db_url)
        sessions = session_factory(engine)
        store = PromptStore(settings.store_dir)
        registry = Registry(sessions, store, settings.archive_limits, settings.max_prompt_pixels,
                            settings.prompt_cache_size)
        registry.sweep()
        app.state.host = open_host(settings, registry)
        datasets = DatasetStore(
            sessions, settings.datasets_dir,
            DatasetLimits(settings.max_upload_bytes, settings.max_unpacked_bytes, settings.max_dataset_images,
                          settings.max_image_pixels),
            settings.max_datasets_per_owner,
        )
        datasets.sweep()
        jobs = JobRunner(settings, sessions, registry, datasets)
        jobs.start()
        app.state.ctx = Context(
            settings, sessions, registry, jobs, RateLimiter(settings.apply_rate_per_minute, settings.apply_burst),
            Gate(settings.max_concurrent_applies, settings.max_queued_applies, settings.apply_queue_timeout_s),
            datasets,
        )
        log.info("tvprompt service: store %s, db %s", settings.store_dir,
                 engine.url.render_as_string(hide_password=True))
        try:
            yield
        finally:
            app.state.host.stop()
            jobs.stop()
            engine.dispose()

    app = FastAPI(
        title="tvprompt Prompt-as-a-Service",
        version=__version__,
        description="Registry of transferable visual prompts: list, download, apply, upload, train.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    from . import docs, web
    from .routers import ask, datasets, health, jobs, prompts

    app.include_router(health.router)
    app.include_router(prompts.router)
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(ask.router)
    app.include_router(web.router)
    docs.install(app)

    @app.exception_handler(TvpError)
    async def _tvp_error(_request: Request, exc: TvpError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", exc, exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestGuard)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The generated schema with the bearer scheme (:func:`docs.security_openapi`), and 422 declared as
    the ``{"detail": "..."}`` body the service really sends."""
    if app.openapi_schema is None:
        from .docs import security_openapi

        schema = security_openapi(app)
        error = {"description": "invalid request fields",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "422" in operation.get("responses", {}):
                    operation["responses"]["422"] = error
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
