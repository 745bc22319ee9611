"""Prometheus metrics of the daemon, in a registry of their own.

Every metric lives in a dedicated ``CollectorRegistry`` (never the global
one), so tests and several daemons in one process do not collide, and the
exposition holds only the daemon's metrics. Names carry the ``predictor_``
prefix and follow the Prometheus naming guide: base units as suffixes
(``_seconds``, ``_bytes``; ``_ticks`` for an interval counted in ticks),
counters end in ``_total`` (``prometheus_client`` appends it), points in
time are ``_timestamp_seconds`` (Unix time), fractions in 0..1 ``_ratio``.

Exposition: ``start_http(registry, host, port)`` serves ``/metrics`` from a
daemon thread; ``port=0`` binds a free port, returned in ``MetricsServer.port``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

from predictor import __version__

#: Histogram buckets in seconds: 25 us to 10 s (1-2.5-5 steps), so that a
#: backlog of seconds is still resolved rather than lumped into ``+Inf``.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    100e-3,
    250e-3,
    500e-3,
    1.0,
    2.5,
    5.0,
    10.0,
)

MODE_NAMES: tuple[str, ...] = ("Standard", "Robust", "Emergency")


class DaemonMetrics:
    """The daemon's counters, gauges and histograms in ``self.registry``.

    ``reasons`` are reject reason labels to pre-create (so that they appear
    with value 0 before the first reject); other reasons are accepted too.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "predictor",
        reasons: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r, ns = self.registry, namespace
        # process_* (CPU seconds, resident memory bytes, open fds, start time) of this process.
        ProcessCollector(registry=r)
        #: ``predictor_build_info{version="..."} 1``
        self.build_info = Info("build", "Version of the running daemon.", namespace=ns, registry=r)
        self.build_info.info({"version": __version__})

        # --- flow ------------------------------------------------------------
        self.ticks = Counter("ticks", "Valid ticks received.", namespace=ns, registry=r)
        self.messages = Counter(
            "messages", "Tick messages received (a batch counts once).", namespace=ns, registry=r
        )
        self.predictions = Counter(
            "predictions", "Predictions published.", namespace=ns, registry=r
        )
        self.rejects = Counter(
            "rejects",
            "Refused ticks or messages, by reason (wire schema and gate).",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.malformed = Counter(
            "malformed_messages",
            "Tick messages with at least one schema reject.",
            namespace=ns,
            registry=r,
        )
        self.regime_changes = Counter(
            "regime_changes", "CUSUM regime-change alarms.", namespace=ns, registry=r
        )
        self.emergency_entries = Counter(
            "emergency_entries",
            "Transitions of an asset into Emergency mode.",
            namespace=ns,
            registry=r,
        )
        self.mode_predictions = Counter(
            "mode_predictions",
            "Predictions by the mode they were made in.",
            ["mode"],
            namespace=ns,
            registry=r,
        )

        # --- latency ---------------------------------------------------------
        self.step_latency = Histogram(
            "step_latency_seconds",
            "Wall time of one batched jitted step.",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS_S,
        )
        self.e2e_latency = Histogram(
            "end_to_end_latency_seconds",
            "Tick receipt to prediction publication.",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS_S,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Assets per batched step.",
            namespace=ns,
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )

        # --- state -----------------------------------------------------------
        self.assets = Gauge("assets", "Assets in the asset table.", namespace=ns, registry=r)
        self.assets_by_mode = Gauge(
            "assets_by_mode", "Assets currently in each mode.", ["mode"], namespace=ns, registry=r
        )
        self.shed_level = Gauge(
            "shed_level", "Load-shedding level (0 = full depth).", namespace=ns, registry=r
        )
        self.shed_depth = Gauge(
            "shed_depth", "Signature depth of the current level.", namespace=ns, registry=r
        )
        self.refit_interval = Gauge(
            "refit_interval_ticks",
            "Ticks between refits of the cached fits (K) in force; load shedding may raise it.",
            namespace=ns,
            registry=r,
        )
        self.shed_switches = Counter(
            "shed_switches",
            "Automatic load-shedding switches (depth or refit interval), by direction.",
            ["direction"],
            namespace=ns,
            registry=r,
        )
        self.jitter_p95 = Gauge(
            "jitter_p95_seconds", "P95 of step-latency jitter.", namespace=ns, registry=r
        )
        self.jitter_p99 = Gauge(
            "jitter_p99_seconds", "P99 of step-latency jitter.", namespace=ns, registry=r
        )
        self.ewma_latency = Gauge(
            "step_latency_ewma_seconds", "EWMA of step latency.", namespace=ns, registry=r
        )
        self.recompiles = Counter(
            "recompiles", "Graph compilations after warm-up.", namespace=ns, registry=r
        )

        # --- persistence and lifecycle ---------------------------------------
        self.snapshot_age = Gauge(
            "snapshot_age_seconds", "Age of the last good snapshot.", namespace=ns, registry=r
        )
        self.snapshot_duration = Gauge(
            "snapshot_duration_seconds",
            "Duration of the last snapshot write.",
            namespace=ns,
            registry=r,
        )
        self.snapshots = Counter("snapshots", "Snapshots written.", namespace=ns, registry=r)
        self.snapshot_failures = Counter(
            "snapshot_failures", "Snapshot writes that failed.", namespace=ns, registry=r
        )
        self.shutdown_duration = Gauge(
            "shutdown_duration_seconds",
            "Duration of the last drain (SIGTERM to exit readiness).",
            namespace=ns,
            registry=r,
        )
        self.up_since = Gauge(
            "start_timestamp_seconds",
            "Unix time (seconds) the daemon started.",
            namespace=ns,
            registry=r,
        )

        for reason in reasons:
            self.rejects.labels(reason=reason)
        for mode in MODE_NAMES:
            self.mode_predictions.labels(mode=mode)
            self.assets_by_mode.labels(mode=mode).set(0)
        for direction in ("down", "up"):
            self.shed_switches.labels(direction=direction)

    def reject(self, reason: str, n: int = 1) -> None:
        """Count ``n`` rejects of ``reason``."""
        self.rejects.labels(reason=reason).inc(n)

    def set_mode_counts(self, counts: Mapping[str, int]) -> None:
        """Set ``assets_by_mode`` for every mode (missing modes: 0)."""
        for mode in MODE_NAMES:
            self.assets_by_mode.labels(mode=mode).set(counts.get(mode, 0))

    def set_shedding(
        self,
        level: int,
        depth: int,
        jitter_p95_ns: float,
        jitter_p99_ns: float,
        ewma_ns: float,
        refit_interval: int,
    ) -> None:
        """Export the load shedder's state (ns in, seconds out; K in ticks)."""
        self.shed_level.set(level)
        self.shed_depth.set(depth)
        self.refit_interval.set(refit_interval)
        self.jitter_p95.set(jitter_p95_ns * 1e-9)
        self.jitter_p99.set(jitter_p99_ns * 1e-9)
        self.ewma_latency.set(ewma_ns * 1e-9)


@dataclass
class MetricsServer:
    """A running exposition endpoint: ``http://host:port/metrics``."""

    host: str
    port: int
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """Scrape URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


def start_http(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (0: a free port) from a daemon thread.

    The bound port is ``MetricsServer.port``.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, int(server.server_port), server, thread)
