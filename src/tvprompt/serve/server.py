"""Running the app under uvicorn with the service's connection settings.

Two things uvicorn does not do by default are set here: ``X-Forwarded-For`` is trusted only
from ``Settings.forwarded_allow_ips`` (uvicorn trusts it from 127.0.0.1 out of the box, so any
local client could pick its rate-limit key), and a connection that has not sent a request's
headers within ``header_timeout_s`` is closed (uvicorn waits for them forever). Idle keep-alive
connections close after ``keep_alive_timeout_s``; the body-read timeout is the app's own
(:mod:`tvprompt.serve.guard`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections that stay without a complete request head too long."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_headers():  # a request head arrived: the app's timeouts take over
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that carry the settings' connection rules."""
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s})
    return {
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": ",".join(settings.forwarded_allow_ips) if settings.forwarded_allow_ips else None,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "http": protocol,
    }


def run(app: FastAPI, settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, **uvicorn_options(settings))
