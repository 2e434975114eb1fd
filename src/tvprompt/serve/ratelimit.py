"""A small in-memory token-bucket rate limiter (per client key, thread safe)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """``rate_per_minute`` sustained, ``burst`` at once. ``hit(key)`` -> seconds to wait (0 = allowed)."""

    def __init__(self, rate_per_minute: float, burst: int, clock=time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 100_000:  # forget idle clients rather than grow without bound
                self._buckets.clear()
            return (1.0 - tokens) / self.rate
