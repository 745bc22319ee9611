"""Degraded-state bookkeeping shared by the cluster's I/O threads.

A source (``"control"``, ``"reader"``) is failing from its first Redis error
to its next success; the member is *degraded* while any source fails. Each
degraded period is kept as ``(start_ms, end_ms)`` Unix milliseconds (the
last ``keep``), so status can show when Redis was away and for how long.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Health:
    """Thread-safe degraded flag with its history."""

    def __init__(self, keep: int = 16) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}
        self._since: int | None = None
        self._periods: deque[tuple[int, int]] = deque(maxlen=keep)
        self.errors = 0
        self.last_error = ""

    def fail(self, source: str, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{source}: {type(exc).__name__}: {exc}"
            if not self._failing:
                self._since = now_ms()
            self._failing[source] = self.last_error

    def ok(self, source: str) -> None:
        with self._lock:
            if self._failing.pop(source, None) is not None and not self._failing:
                assert self._since is not None
                self._periods.append((self._since, now_ms()))
                self._since = None

    @property
    def degraded(self) -> bool:
        with self._lock:
            return bool(self._failing)

    def snapshot(self) -> dict[str, Any]:
        """``degraded``, ``degraded_since_ms``, ``degraded_periods``, ``errors``, ``last_error``."""
        with self._lock:
            return {
                "degraded": bool(self._failing),
                "degraded_since_ms": self._since,
                "degraded_periods": [list(p) for p in self._periods],
                "errors": self.errors,
                "last_error": self.last_error,
            }
