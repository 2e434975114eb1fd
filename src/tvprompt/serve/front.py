"""What the web front adds at start-up: the demo prompts (``--demo``) and the hosted models for ask."""

from __future__ import annotations

from .ask import ModelHost
from .ratelimit import RateLimiter
from .registry import Registry
from .settings import Settings


def open_host(settings: Settings, registry: Registry) -> ModelHost:
    """Register the demo prompts when asked, then load the hosted models and start the ask worker."""
    if settings.demo:
        from .demo import ensure_demo_prompts

        ensure_demo_prompts(registry, settings)
    host = ModelHost.load(
        settings.hosted_models, device=settings.model_device, queue_size=settings.ask_queue_size,
        batch_size=settings.ask_batch_size, limiter=RateLimiter(settings.ask_rate_per_minute, settings.ask_burst),
    )
    host.start()
    return host
