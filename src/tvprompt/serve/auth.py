"""Bearer tokens: random, shown once, stored only as a SHA-256 hash, each bound to one owner."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ..errors import UsageError
from .db import TokenRow

TOKEN_PREFIX = "tvp_"
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def hash_token(token: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is a safe one-way store (no salt needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_owner(owner: str) -> str:
    if not OWNER_RE.match(owner or ""):
        raise UsageError(f"owner {owner!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    return owner


def create_token(sessions: sessionmaker, owner: str) -> tuple[str, str]:
    """Create a token for ``owner``; returns (token id, token). The token itself is never stored."""
    check_owner(owner)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = TokenRow(id=secrets.token_hex(8), owner=owner, token_hash=hash_token(token))
    with sessions.begin() as s:
        s.add(row)
    return row.id, token


def revoke_token(sessions: sessionmaker, token_id: str) -> bool:
    with sessions.begin() as s:
        row = s.get(TokenRow, token_id)
        if row is None:
            return False
        row.revoked = 1
    return True


def list_tokens(sessions: sessionmaker) -> list[TokenRow]:
    with sessions() as s:
        return list(s.scalars(select(TokenRow).order_by(TokenRow.created_at)))


def owner_for(sessions: sessionmaker, token: str) -> str | None:
    """The owner a token belongs to, or None when it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    with sessions() as s:
        row = s.scalars(select(TokenRow).where(TokenRow.token_hash == hash_token(token))).first()
        if row is None or row.revoked:
            return None
        return row.owner
