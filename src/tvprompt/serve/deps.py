"""Request dependencies: the service context and the caller's identity."""

from __future__ import annotations

from fastapi import HTTPException, Request

from .auth import owner_for


def context(request: Request):
    return request.app.state.ctx


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "malformed Authorization header; send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def require_owner(request: Request) -> str:
    """The owner of the request's bearer token; 401 when missing, malformed, unknown or revoked."""
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "this call needs a token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    owner = owner_for(context(request).sessions, token)
    if owner is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return owner


def client_key(request: Request) -> str:
    """Rate-limit key: the token's owner when a valid token is sent, else the client address."""
    try:
        token = bearer_token(request)
    except HTTPException:
        token = None
    if token:
        owner = owner_for(context(request).sessions, token)
        if owner:
            return f"owner:{owner}"
    return f"ip:{request.client.host if request.client else 'unknown'}"
