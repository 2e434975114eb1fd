"""A bounded queue in front of expensive calls: ``max_running`` at once, ``max_queued`` waiting, the rest refused."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class Busy(Exception):
    """No slot now and the queue is full (or the wait timed out)."""


class Gate:
    def __init__(self, max_running: int, max_queued: int, timeout_s: float) -> None:
        self.capacity = max_running + max_queued
        self.timeout_s = timeout_s
        self._slots = threading.Semaphore(max_running)
        self._admitted = 0  # running + waiting
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one running slot for the block; raises :class:`Busy` without waiting when the queue is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise Busy
            self._admitted += 1
        try:
            if not self._slots.acquire(timeout=self.timeout_s):
                raise Busy
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1
