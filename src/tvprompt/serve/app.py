"""The FastAPI application: ``create_app(settings)``; resources are opened in ``lifespan``."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import TvpError
from .front import open_host
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


class PayloadTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes: by Content-Length up front, by counting otherwise."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_json(send, 413, f"request body over the limit of {self.limit} bytes")
                    return
        seen = 0
        state = {"exceeded": False, "started": False, "replaced": False}

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    state["exceeded"] = True
                    raise PayloadTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # the app may turn our exception into its own error (e.g. a 400 from the form parser):
            # once the body was too large, the answer is 413 whatever the app says
            if message["type"] == "http.response.start":
                state["started"] = True
                if state["exceeded"]:
                    state["replaced"] = True
                    await _send_json(send, 413, f"request body over the limit of {self.limit} bytes")
                    return
            if not state["replaced"]:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except PayloadTooLarge:
            if not state["started"]:
                await _send_json(send, 413, f"request body over the limit of {self.limit} bytes")


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
        registry = Registry(sessions, store, settings.archive_limits, settings.max_prompt_pixels, settings.prompt_cache_size)
        registry.sweep()
        app.state.host = open_host(settings, registry)
        jobs = JobRunner(settings, sessions, registry)
        jobs.start()
        app.state.ctx = Context(settings, sessions, registry, jobs, RateLimiter(settings.apply_rate_per_minute, settings.apply_burst))
        log.info("tvprompt service: store %s, db %s", settings.store_dir, engine.url.render_as_string(hide_password=True))
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
    from .routers import ask, health, jobs, prompts

    app.include_router(health.router)
    app.include_router(prompts.router)
    app.include_router(jobs.router)
    app.include_router(ask.router)
    app.include_router(web.router)
    docs.install(app)

    @app.exception_handler(TvpError)
    async def _tvp_error(_request: Request, exc: TvpError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

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
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    return app
