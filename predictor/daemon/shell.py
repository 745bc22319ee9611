"""The daemon's shell: what exists from the first second, before any graph compiles.

``build_shell`` creates, in this order and without touching JAX's device
work: the metrics registry, the loop's mailbox and signal flags, the
service-manager notifier and watchdog, the ZeroMQ tick (PULL) and
prediction (PUB) sockets, the metrics HTTP server, and the admin socket
(served by the loop, so ``predictorctl status`` answers while the graphs
compile). ``Shell.close`` releases all of it, the runtime lock last.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from structlog.typing import FilteringBoundLogger

from predictor.admin.protocol import resolve_group
from predictor.admin.server import AdminServer
from predictor.daemon.commands import CommandQueue
from predictor.daemon.intake import MULTIPART, Intake
from predictor.daemon.lifecycle import Mailbox, Signals
from predictor.daemon.loading import LiveConfig
from predictor.daemon.metrics import DaemonMetrics, MetricsServer, start_http
from predictor.daemon.notify import Notifier, Watchdog
from predictor.daemon.publish import GATE_LABELS
from predictor.daemon.rounds import RoundRunner
from predictor.daemon.telemetry import CompileCounter, Telemetry
from predictor.daemon.vram import VramMonitor
from predictor.ipc.endpoints import bound_endpoint, default_endpoints, ipc_path, make_pub, make_pull
from predictor.ipc.wire import REJECT_REASONS
from predictor.snapshots import AsyncSnapshotWriter, EmergencyDumper, SnapshotStore

#: Most ticks of one asset taken per loop iteration: each is one batched
#: step, so this bounds an iteration's duration (admin commands, watchdog).
MAX_ROUNDS_PER_ITERATION = 32
#: Malformed-message log lines per second (the rest are counted, then summarised).
MALFORMED_LOG_PER_S = 20
#: Reject labels of the daemon besides the wire's reasons.
DAEMON_REASONS = (MULTIPART, "asset_limit", *GATE_LABELS)


@dataclass
class Shell:
    """The parts of ``build_shell`` (see the module docstring)."""

    log: FilteringBoundLogger
    live: LiveConfig
    lock_fd: int
    started_mono: float
    metrics: DaemonMetrics
    compiles: CompileCounter
    mailbox: Mailbox
    signals: Signals
    notifier: Notifier
    telemetry: Telemetry
    ctx: zmq.Context[zmq.Socket[bytes]]
    pull: zmq.Socket[bytes] | None
    pub: zmq.Socket[bytes]
    intake: Intake
    endpoints: dict[str, Any]
    metrics_server: MetricsServer | None
    commands: CommandQueue
    admin: AdminServer
    rounds: RoundRunner
    io_pool: ThreadPoolExecutor
    store: SnapshotStore
    writer: AsyncSnapshotWriter
    dumper: EmergencyDumper
    vram: VramMonitor

    def close_intake(self) -> None:
        """Close the tick socket (the drain took what was queued)."""
        if self.pull is not None:
            self.pull.close(linger=0)
            self.pull = None

    def close(self) -> None:
        """Release everything, in an order that lets pending replies out."""
        self.commands.refuse_all("the daemon is stopping")
        self.rounds.close()
        self.admin.close()
        self.vram.stop()
        self.writer.close(timeout=5.0)
        self.io_pool.shutdown(wait=True)
        self.close_intake()
        self.pub.close(linger=1000)
        self.ctx.term()
        for name in ("ticks", "predictions"):
            path = ipc_path(str(self.endpoints.get(name, "")))
            # libzmq leaves the socket files of closed ipc listeners behind.
            if path is not None and path.is_socket():
                path.unlink(missing_ok=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.notifier.close()
        Signals.uninstall()
        self.mailbox.close()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def build_shell(live: LiveConfig, log: FilteringBoundLogger, lock_fd: int) -> Shell:
    """Bind the sockets and start serving the admin socket (see the module docstring)."""
    started = time.monotonic()
    settings = live.settings
    metrics = DaemonMetrics(reasons=(*REJECT_REASONS, *DAEMON_REASONS))
    metrics.up_since.set(time.time())
    compiles = CompileCounter(metrics, log)
    mailbox = Mailbox()
    signals = Signals()
    signals.install(mailbox)
    notifier = Notifier()
    telemetry = Telemetry(metrics, notifier, Watchdog(notifier), compiles)
    io_pool = ThreadPoolExecutor(1, thread_name_prefix="daemon_io")
    commands = CommandQueue(io_pool, log)

    defaults = default_endpoints()
    admin_path = Path(settings.admin_socket) if settings.admin_socket else defaults.admin
    try:
        gid = resolve_group(settings.admin_group)
    except KeyError:
        log.warning("admin_group_unknown", group=settings.admin_group)
        gid = None
    admin = AdminServer(admin_path, commands.submit, log=log, admin_gid=gid)
    # Served from the loop (bounded events per iteration), not from a thread:
    # a second Python thread would compete with prediction for the GIL.
    admin.start(thread=False)

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = make_pull(
        ctx,
        settings.ticks_endpoint or defaults.ticks,
        max_msg_size=settings.max_msg_bytes,
        rcvhwm=settings.rcvhwm,
    )
    pub = make_pub(
        ctx, settings.predictions_endpoint or defaults.predictions, sndhwm=settings.sndhwm
    )
    intake = Intake(
        pull,
        metrics,
        log,
        max_msg_bytes=settings.max_msg_bytes,
        max_rounds=MAX_ROUNDS_PER_ITERATION,
        log_per_s=MALFORMED_LOG_PER_S,
        clock=live.predictor.clock,
        max_future_skew_s=settings.max_future_skew_s,
    )
    endpoints: dict[str, Any] = {
        "ticks": bound_endpoint(pull),
        "predictions": bound_endpoint(pub),
        "metrics": None,
        "shm": settings.shm_name or None,
        "admin": str(admin_path),
    }
    metrics_server = None
    if settings.metrics_port >= 0:
        metrics_server = start_http(metrics.registry, settings.metrics_host, settings.metrics_port)
        endpoints["metrics"] = metrics_server.url
    log.info("sockets_bound", **endpoints)

    store = SnapshotStore(settings.state_dir(), keep=settings.snapshot_keep)
    dump_dir = settings.emergency_dump_dir or str(store.directory / "emergency")
    return Shell(
        log=log,
        live=live,
        lock_fd=lock_fd,
        started_mono=started,
        metrics=metrics,
        compiles=compiles,
        mailbox=mailbox,
        signals=signals,
        notifier=notifier,
        telemetry=telemetry,
        ctx=ctx,
        pull=pull,
        pub=pub,
        intake=intake,
        endpoints=endpoints,
        metrics_server=metrics_server,
        commands=commands,
        admin=admin,
        rounds=RoundRunner(admin),
        io_pool=io_pool,
        store=store,
        writer=AsyncSnapshotWriter(max_workers=1),
        dumper=EmergencyDumper(dump_dir),
        vram=VramMonitor(metrics.registry, log),
    )
