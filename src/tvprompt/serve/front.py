"""What the web front adds at start-up: the demo prompts (``--demo``) and the hosted models for ask."""

from __future__ import annotations

from .ask import ModelHost
from .ratelimit import RateLimiter
from .registry import Registry
from .settings import Settings


def open_host(settings: Settings, registry: Registry) -> ModelHost:
    """Load the hosted models, register the demo prompts when asked (reusing those models), start the ask worker."""
    host = ModelHost.load(
        settings.hosted_models, device=settings.model_device, queue_size=settings.ask_queue_size,
        batch_size=settings.ask_batch_size, limiter=RateLimiter(settings.ask_rate_per_minute, settings.ask_burst),
    )
    if settings.demo:
        from .demo import ensure_demo_prompts

        ensure_demo_prompts(registry, host.adapters)
    host.start()
    return host
