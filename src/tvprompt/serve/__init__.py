"""Prompt-as-a-Service: a registry of prompts with apply and training jobs (FastAPI).

``create_app(Settings(...))`` builds the app; ``tvp serve`` runs it with uvicorn. The web
stack (fastapi, uvicorn, sqlalchemy, python-multipart) is the ``serve`` extra and is imported
only when the app is built, so ``import tvprompt`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app for ``settings`` (see :mod:`tvprompt.serve.app`)."""
    try:
        from .app import create_app as _create_app
    except ModuleNotFoundError as e:
        from ..errors import UsageError

        raise UsageError(f"the service needs the 'serve' extra ({e.name} is missing): pip install "
                         "'tvprompt[serve]'") from None
    return _create_app(settings)
