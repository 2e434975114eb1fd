"""Request dependencies: the service context and the caller's identity."""

from __future__ import annotations

from fastapi import HTTPException, Request

from .auth import owner_for

AUTH_HINT = "this call needs a token: send 'Authorization: Bearer <token>'"
MALFORMED = "malformed Authorization header; send 'Authorization: Bearer <token>'"


def context(request: Request):
    return request.app.state.ctx


def parse_bearer(header: str | None) -> tuple[str | None, str | None]:
    """(token, None), (None, None) without a header, or (None, why) for a malformed one."""
    if not header:
        return None, None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, MALFORMED
    return token.strip(), None


def bearer_token(request: Request) -> str | None:
    token, error = parse_bearer(request.headers.get("authorization"))
    if error:
        raise HTTPException(401, error, headers={"WWW-Authenticate": "Bearer"})
    return token


def require_owner(request: Request) -> str:
    """The owner of the request's bearer token; 401 when missing, malformed, unknown or revoked."""
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, AUTH_HINT, headers={"WWW-Authenticate": "Bearer"})
    owner = owner_for(context(request).sessions, token)
    if owner is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return owner


def client_key(request: Request) -> str:
    """Rate-limit key: the token's owner when a valid token is sent, else the client address.

    The address is the TCP peer unless the server was told to trust a proxy's X-Forwarded-For
    (``forwarded_allow_ips``); the ASGI server applies that before the app sees the request.
    """
    try:
        token = bearer_token(request)
    except HTTPException:
        token = None
    if token:
        owner = owner_for(context(request).sessions, token)
        if owner:
            return f"owner:{owner}"
    return f"ip:{request.client.host if request.client else 'unknown'}"
