"""Telemetry of the loop: compile accounting, tick rate, gauges, ``STATUS=`` lines, watchdog.

Everything here runs on the loop thread except ``CompileCounter.listener``,
which JAX calls on whichever thread compiles (the start-up compiler, or the
loop); its counters are guarded by a lock.

Cadence (``Telemetry.periodic``): gauges and a tick-rate sample every
``GAUGE_PERIOD_S``, a ``STATUS=`` line every ``STATUS_PERIOD_S``; the tick
rate is the slope over the last ``RATE_WINDOW_S`` of samples.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterator

from structlog.typing import FilteringBoundLogger

from predictor.daemon.metrics import DaemonMetrics
from predictor.daemon.notify import Notifier, Watchdog
from predictor.daemon.shedder import LoadShedder

#: JAX's monitoring event of one backend compilation.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
#: Seconds between gauge updates, STATUS= lines and tick-rate samples.
GAUGE_PERIOD_S = 1.0
STATUS_PERIOD_S = 10.0
RATE_WINDOW_S = 10.0


def finite(x: float) -> float | None:
    """``x``, or None for NaN and infinities (JSON has neither)."""
    return x if math.isfinite(x) else None


class CompileCounter:
    """Counts XLA compilations; those outside an ``expected()`` scope are unexpected.

    Warm-up, table growth and re-initialisation compile by design; any other
    compilation means a shape or a depth escaped the warm-up, and is counted
    in ``predictor_recompiles_total`` and logged.
    """

    def __init__(self, metrics: DaemonMetrics, log: FilteringBoundLogger) -> None:
        self.metrics = metrics
        self.log = log
        self.total = 0
        self.unexpected = 0
        self._expected = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def expected(self) -> Iterator[None]:
        """Compilations inside this scope (on any thread) are expected."""
        with self._lock:
            self._expected += 1
        try:
            yield
        finally:
            with self._lock:
                self._expected -= 1

    def listener(self, event: str, duration_secs: float, **_: str | int) -> None:
        """``jax.monitoring`` duration listener."""
        if event != COMPILE_EVENT:
            return
        with self._lock:
            self.total += 1
            if self._expected:
                return
            self.unexpected += 1
        self.metrics.recompiles.inc()
        self.log.warning("unexpected_compile", duration_s=round(duration_secs, 3))


class TickRate:
    """Ticks per second over the last ``RATE_WINDOW_S`` (samples of a running count)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, count: int) -> None:
        """Record the running count at monotonic time ``now``."""
        self._samples.append((now, count))
        while self._samples and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()

    def rate(self) -> float:
        """Slope of the window's samples (0 before two samples)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class Telemetry:
    """Metrics, the service manager's notifications and the watchdog, on the loop's cadence."""

    def __init__(
        self,
        metrics: DaemonMetrics,
        notifier: Notifier,
        watchdog: Watchdog,
        compiles: CompileCounter,
    ) -> None:
        self.metrics = metrics
        self.notifier = notifier
        self.watchdog = watchdog
        self.compiles = compiles
        self.rate = TickRate()
        #: Pings start with READY: before it, systemd's start timeout applies.
        self.pinging = False
        self._next_gauges = 0.0
        self._next_status = 0.0

    def ping(self) -> None:
        """``WATCHDOG=1`` if due (the loop made progress)."""
        if self.pinging:
            self.watchdog.maybe_ping()

    def ready(self, status: str) -> None:
        """``READY=1``; watchdog pings begin."""
        self.notifier.ready(status)
        self.pinging = True
        self.watchdog.maybe_ping()

    def export_shedding(self, s: LoadShedder) -> None:
        """Shedding gauges (level, depth, refit interval, jitter percentiles, EWMA)."""
        self.metrics.set_shedding(
            s.level,
            s.depth,
            s.jitter_p95_ns if math.isfinite(s.jitter_p95_ns) else 0.0,
            s.jitter_p99_ns if math.isfinite(s.jitter_p99_ns) else 0.0,
            s.ewma_ns if math.isfinite(s.ewma_ns) else 0.0,
            s.refit_interval,
        )

    def periodic(self, now: float, ticks: int) -> tuple[bool, bool]:
        """Take a rate sample when due; returns (gauges due, STATUS= line due)."""
        gauges = now >= self._next_gauges
        if gauges:
            self._next_gauges = now + GAUGE_PERIOD_S
            self.rate.sample(now, ticks)
        status = now >= self._next_status
        if status:
            self._next_status = now + STATUS_PERIOD_S
        return gauges, status


def shed_fields(s: LoadShedder) -> dict[str, object]:
    """The ``shed`` part of the ``status`` reply."""
    return {
        "level": s.level,
        "depth": s.depth,
        "pinned": s.pinned is not None,
        "ladder": list(s.depths),
        "refit_interval": s.refit_interval,
        "refit_level": s.refit_level,
        "refit_ladder": list(s.refit_intervals),
        "jitter_p95_ns": finite(s.jitter_p95_ns),
        "jitter_p99_ns": finite(s.jitter_p99_ns),
        "ewma_ns": finite(s.ewma_ns),
        "switches": s.switches,
    }


def monotonic_age(since: float | None) -> float | None:
    """Seconds since the monotonic time ``since`` (None stays None)."""
    return None if since is None else time.monotonic() - since
