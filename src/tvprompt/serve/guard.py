"""What runs before a route reads its body: the token check, body limits, a body-read timeout.

FastAPI reads (and parses) a request body before it runs the route's dependencies, so without
this an anonymous client could make the server receive a whole upload before being told it
needs a token. :class:`GuardedRoute` (the routers' ``route_class``) runs first: a route that
depends on :func:`~tvprompt.serve.deps.require_owner` gets its token checked before one body
byte is read, and the route's own body limit is set (the image limit for apply, the upload limit
for uploads). :class:`RequestGuard` (middleware) counts every body against that limit,
``max_json_bytes`` for JSON and ``max_request_bytes`` for anything else, and answers 408 to a
client that stops sending its body for ``body_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import owner_for
from .deps import AUTH_HINT, parse_bearer, require_owner

# multipart boundaries and headers around the file itself
_FORM_SLACK = 64 * 1024
ROUTE_LIMIT_KEY = "tvp.body_limit"


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


def _needs_owner(dependant: Any) -> bool:
    return any(d.call is require_owner or _needs_owner(d) for d in getattr(dependant, "dependencies", ()))


async def send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    all_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def _limit(scope: Scope, settings: Any) -> int:
        limit = settings.max_request_bytes
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == b"application/json" or content_type.endswith(b"+json"):
            limit = min(limit, settings.max_json_bytes)
        return limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = getattr(scope["app"].state, "ctx", None) if scope["type"] == "http" else None
        if ctx is None:
            await self.app(scope, receive, send)
            return
        settings = ctx.settings
        limit = self._limit(scope, settings)
        if _declared_length(scope) > limit:
            await send_json(send, 413, f"request body over the limit of {limit} bytes")
            return
        seen = 0
        state = {"error": None, "started": False, "replaced": False, "body_done": False}

        async def guarded_receive() -> Message:
            nonlocal seen
            if state["body_done"]:  # after the body: waiting for a disconnect is not a body read
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=settings.body_timeout_s)
            except TimeoutError:
                state["error"] = (408, f"request body not received within {settings.body_timeout_s:g} s")
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    state["error"] = (413, f"request body over the limit of {limit} bytes")
                    raise _TooLarge
                route = scope.get(ROUTE_LIMIT_KEY)  # the route's own, smaller limit
                if route is not None and seen > route[0]:
                    state["error"] = (413, route[1])
                    raise _TooLarge
                state["body_done"] = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            # the app may turn our exception into its own error (e.g. a 400 from the form parser):
            # once the body broke a limit, the answer is that limit's status whatever the app says
            if message["type"] == "http.response.start":
                state["started"] = True
                if state["error"]:
                    state["replaced"] = True
                    await send_json(send, *state["error"])
                    return
            if not state["replaced"]:
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except (_TooLarge, _TooSlow):
            if not state["started"]:
                await send_json(send, *state["error"])


def _declared_length(scope: Scope) -> int:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def route_limit(name: str | None, settings: Any) -> tuple[int, str] | None:
    """(body limit, refusal) of a route that takes an upload; None: the request-wide limits apply."""
    if name in ("apply_prompt", "ask"):
        return settings.max_image_bytes + _FORM_SLACK, f"image is over the limit of {settings.max_image_bytes} bytes"
    if name in ("upload_prompt", "upload_dataset"):
        return settings.max_upload_bytes + _FORM_SLACK, f"upload is over the limit of {settings.max_upload_bytes} bytes"
    return None


class GuardedRoute(APIRoute):
    """An APIRoute that checks the token and sets the body limit before FastAPI reads the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_owner = _needs_owner(self.dependant)
        name = self.name

        async def guarded(request: Request) -> Response:
            ctx = request.app.state.ctx
            if needs_owner:
                refusal = await run_in_threadpool(_auth_refusal, ctx, request.scope)
                if refusal is not None:
                    return JSONResponse({"detail": refusal}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            limit = route_limit(name, ctx.settings)
            if limit is not None:
                if _declared_length(request.scope) > limit[0]:
                    return JSONResponse({"detail": limit[1]}, status_code=413)
                request.scope[ROUTE_LIMIT_KEY] = limit
            return await handler(request)

        return guarded


def _auth_refusal(ctx: Any, scope: Scope) -> str | None:
    """Why the request's token is refused, or None when it names an owner."""
    header = None
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            header = value.decode("latin-1")
            break
    token, error = parse_bearer(header)
    if error:
        return error
    if token is None:
        return AUTH_HINT
    return None if owner_for(ctx.sessions, token) else "invalid or revoked token"
