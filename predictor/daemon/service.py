"""predictord's service: one loop that does all the work (docs/architecture.md).

Shape (a pre-fork arbiter's, with one worker: this loop): signal handlers
only set flags and wake the loop; threads only post to the loop's mailbox
(``lifecycle``). The parts, each in its own module: the shell (sockets,
admin server, notifications: ``shell``), the start-up compiler
(``startup``, ``warmup``), the engine (model, asset table, restore:
``engine``), the tick pipeline (``pipeline``), admin commands
(``commands``), reloads (``reload``), snapshots (``snapshotting``) and
telemetry (``telemetry``).

Life: the shell binds every socket and serves the admin socket at once;
the start-up compiler builds the engine and compiles the first bucket's
graphs, then the loop adopts the engine, sends ``READY=1`` and steps ticks
while the other buckets compile. ``status`` shows the phase (``warming up:
3/8 graphs``) from the first second.

One iteration (``iterate``):

1. wait (``zmq.Poller``) for ticks, admin events or a wake-up, at most
   ``IDLE_POLL_MS`` (0 when work is already waiting);
2. run what threads posted (snapshot completions, start-up progress);
3. take the waiting ticks and step them round by round (``TickPipeline``);
4. serve the admin socket (``ADMIN_POLLS_PER_ITERATION`` bounded polls),
   run queued admin commands, a SIGHUP reload, periodic work (gauges,
   ``STATUS=``, snapshots), the watchdog ping and the shared-memory
   heartbeat (also refreshed after every round).

Stop (SIGTERM, SIGINT or ``drain``): ``STOPPING=1``; the same iteration
runs without idle waits until the tick socket is empty (or for at most
``DRAIN_RECEIVE_FRACTION`` of the budget against a feeder that never
pauses); then the socket closes, every tick received has been answered,
pending snapshot writes are awaited, the final snapshot is written and
everything is closed; exit 0.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import zmq
from structlog.typing import FilteringBoundLogger

import predictor
from predictor.daemon.engine import Engine, build_engine
from predictor.daemon.handlers import make_handlers
from predictor.daemon.lifecycle import LOCK_NAME, AlreadyRunningError, acquire_lock
from predictor.daemon.loading import LiveConfig, LoadedConfig
from predictor.daemon.logging import configure, get_logger
from predictor.daemon.shedder import LevelChange, depth_ladder
from predictor.daemon.shell import Shell, build_shell
from predictor.daemon.startup import Startup, StartupHooks
from predictor.daemon.status import export_gauges, phase, status_line, status_reply
from predictor.daemon.telemetry import finite
from predictor.daemon.warmup import Progress
from predictor.ipc.endpoints import runtime_dir as default_runtime_dir

#: GIL switch interval of the daemon (seconds); see ``run_service``.
GIL_SWITCH_INTERVAL_S = 0.001
#: Longest idle wait of one loop iteration (ms): bounds the latency of
#: periodic work; ticks and admin events wake the loop at once.
IDLE_POLL_MS = 50
#: Admin server polls per iteration (each serves a bounded number of events):
#: enough to keep up with a flood of connections while ticks flow.
ADMIN_POLLS_PER_ITERATION = 4
#: Share of the drain budget spent taking queued ticks after a stop request.
DRAIN_RECEIVE_FRACTION = 0.3


class Service:
    """The loop over a shell; ``run()`` returns the process exit status."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.log = shell.log
        self.live = shell.live
        self.engine: Engine | None = None
        self.failure: BaseException | None = None
        self.device = _device_string()
        settings = self.live.settings
        self.progress = Progress(
            total=len(settings.batch_buckets) * len(depth_ladder(self.live.predictor))
        )
        self.poller = zmq.Poller()
        self.poller.register(shell.mailbox.fileno(), zmq.POLLIN)
        self.poller.register(shell.admin.fileno(), zmq.POLLIN)
        self.handlers = make_handlers(self)
        hooks = StartupHooks(
            graph_done=self._graph_done,
            adopt=self._adopt,
            bucket_ready=self._bucket_ready,
            finished=self._warmup_finished,
            failed=self._startup_failed,
        )
        self.startup = Startup(
            lambda: build_engine(
                shell, self.live, on_shed=self.shed_changed, status_line=self.status_line
            ),
            settings.batch_buckets,
            hooks,
            shell.mailbox,
            shell.compiles,
            self.log,
        )

    # ------------------------------------------------------------------ run --
    def run(self) -> int:
        """Start, serve until stopped, drain; returns the exit status."""
        self.startup.start()
        try:
            while not self.shell.signals.stop_requested and self.failure is None:
                self.iterate(IDLE_POLL_MS)
            if self.failure is not None:
                self.log.error("startup_failed", error=repr(self.failure))
                self.startup.stop(timeout=5.0)
                self._close()
                return 1
            if self.engine is None:
                return self._stop_during_startup()
            return self.drain(self.engine)
        except Exception as exc:
            self.log.exception("loop_failed", error=repr(exc))
            self.startup.stop(timeout=5.0)
            self._close()
            return 1

    def iterate(self, idle_ms: int) -> int:
        """One turn of the loop (see the module docstring); returns the ticks taken."""
        shell = self.shell
        busy = shell.mailbox.pending() or shell.commands.pending()
        events = dict(self.poller.poll(0 if busy or shell.signals.reload_requested else idle_ms))
        shell.mailbox.clear_wakeups()
        shell.mailbox.run_pending()
        taken = 0
        engine = self.engine
        if engine is not None and shell.pull is not None:
            items = engine.pipeline.take(self.live.settings.max_drain)
            taken = len(items)
            if items:
                engine.pipeline.process(items)
        # Once per turn (replies, idle expiry); more while clients keep it busy.
        polls = ADMIN_POLLS_PER_ITERATION if shell.admin.fileno() in events else 1
        for _ in range(polls):
            shell.admin.poll_once(0.0)
        ticks_waiting = engine.pipeline.has_more if engine is not None else _never
        shell.commands.run(self.handlers, ticks_waiting)
        if engine is not None and shell.signals.take_reload():
            self.log.info("sighup_reload")
            engine.reloader.reload(reinit=False, source="SIGHUP")
        self._periodic()
        shell.telemetry.ping()
        if engine is not None:
            engine.heartbeat()  # readers of the shared memory see a live writer while idle
        return taken

    def drain(self, engine: Engine) -> int:
        """Stop accepting ticks, answer every tick received, write the final snapshot."""
        shell = self.shell
        start = time.monotonic()
        budget = self.live.settings.drain_budget_s
        reason = shell.signals.stop_reason
        shell.notifier.stopping(f"draining ({reason})")
        self.log.info("drain_started", reason=reason, budget_s=budget)
        self.startup.cancel.set()
        pipeline = engine.pipeline
        received_before = pipeline.ticks
        receive_until = start + DRAIN_RECEIVE_FRACTION * budget
        cut = False
        while True:
            taken = self.iterate(0)
            if taken == 0 and not pipeline.has_more():
                break
            if time.monotonic() > receive_until:
                cut = True
                break
        if shell.pull is not None:
            self.poller.unregister(shell.pull)
        shell.close_intake()
        self.log.info(
            "intake_closed",
            ticks_received=pipeline.ticks,
            received_during_drain=pipeline.ticks - received_before,
            predictions=pipeline.predictions,
            cut_by_budget=cut,
        )
        remaining = max(0.5, budget - (time.monotonic() - start) - 1.0)
        self.startup.stop(timeout=remaining / 2)
        saved = engine.snapshotter.final(max(0.5, budget - (time.monotonic() - start) - 1.0))
        shell.mailbox.run_pending()  # answer the snapshot requests that completed
        duration = time.monotonic() - start
        shell.metrics.shutdown_duration.set(duration)
        status = 0 if saved else 1
        self.log.info(
            "shutdown_complete",
            duration_s=round(duration, 3),
            ticks_received=pipeline.ticks,
            predictions=pipeline.predictions,
            rejected_by_gate=pipeline.publisher.rejections,
            exit_status=status,
        )
        self._close()
        return status

    def _stop_during_startup(self) -> int:
        """Stopped while the first graphs compiled: nothing was stepped, nothing to save."""
        self.log.info("stopped_during_startup", reason=self.shell.signals.stop_reason)
        self.shell.notifier.stopping()
        self.startup.stop(timeout=self.live.settings.drain_budget_s)
        self.shell.mailbox.run_pending()  # an engine built meanwhile is closed, not adopted
        self._close()
        return 0

    def _close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.shell.close()

    # ----------------------------------------------------- start-up (posted) --
    def _graph_done(self) -> None:
        self.progress.done += 1
        self.log.info("warmup_progress", graphs=self.progress.done, total=self.progress.total)

    def _adopt(self, engine: Engine, duration_s: float) -> None:
        """The first bucket is compiled: take the engine, READY=1, start stepping ticks."""
        shell = self.shell
        if shell.signals.stop_requested:
            engine.close()
            return
        self.engine = engine
        engine.pipeline.bucket_ready(self.live.settings.batch_buckets[0])
        if shell.pull is not None:
            self.poller.register(shell.pull, zmq.POLLIN)
        shell.vram.start()
        self.progress.ready = True
        export_gauges(self.shell, engine)
        shell.telemetry.ready(self.status_line())
        self.log.info(
            "ready",
            assets=len(engine.table),
            device=self.device,
            config=None if self.live.path is None else str(self.live.path),
            pid=os.getpid(),
            duration_s=round(duration_s, 3),
            graphs=self.progress.done,
            total=self.progress.total,
        )

    def _bucket_ready(self, bucket: int) -> None:
        if self.engine is not None:
            self.engine.pipeline.bucket_ready(bucket)

    def _warmup_finished(self, duration_s: float) -> None:
        self.progress.finished = True
        engine = self.engine
        self.log.info(
            "warmup_done",
            duration_s=round(duration_s, 3),
            buckets=list(self.live.settings.batch_buckets),
            depths=[] if engine is None else list(engine.model.depths),
            compiles=self.shell.compiles.total,
        )

    def _startup_failed(self, exc: BaseException) -> None:
        self.failure = exc

    # --------------------------------------------------------------- admin --
    def request_stop(self, reason: str) -> None:
        """Drain and exit (the admin ``drain`` command)."""
        self.shell.signals.request_stop(reason)

    def shed_changed(self, change: LevelChange) -> None:
        """Count, log and export a change of the shedding state (depth or refit interval)."""
        if change.reason in ("latency", "jitter", "recovery"):
            direction = "up" if change.reason == "recovery" else "down"
            self.shell.metrics.shed_switches.labels(direction=direction).inc()
        self.log.info(
            "shed_level_changed",
            old_level=change.old_level,
            new_level=change.new_level,
            old_depth=change.old_depth,
            new_depth=change.new_depth,
            old_refit_interval=change.old_refit_interval,
            new_refit_interval=change.new_refit_interval,
            reason=change.reason,
            ewma_ns=round(change.ewma_ns),
            jitter_p99_ns=finite(change.jitter_p99_ns),
        )
        if self.engine is not None:
            self.shell.telemetry.export_shedding(self.engine.model.shedder)

    # ----------------------------------------------------------- telemetry --
    def _phase(self) -> str:
        return phase(self.shell.signals.stop_requested, self.engine is not None, self.progress)

    def status_line(self) -> str:
        """The ``STATUS=`` text."""
        return status_line(self.shell, self.engine, self._phase())

    def status(self) -> dict[str, Any]:
        """The ``status`` reply's fields (``predictor.admin.protocol``)."""
        return status_reply(self.shell, self.engine, self.progress, self._phase(), self.device)

    def _periodic(self) -> None:
        shell, engine = self.shell, self.engine
        now = time.monotonic()
        gauges, status = shell.telemetry.periodic(now, shell.intake.ticks)
        if engine is not None and gauges:
            export_gauges(self.shell, engine)
        if status:
            shell.notifier.status(self.status_line())
        if engine is not None and not shell.signals.stop_requested:
            engine.snapshotter.periodic(now)


def _never() -> bool:
    return False


def _device_string() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform}:{dev.id} ({getattr(dev, 'device_kind', '')})"


def run_service(loaded: LoadedConfig, *, environment: Mapping[str, str]) -> int:
    """Entry from ``main``: configure logs, take the runtime lock, run the service."""
    configure(level=loaded.daemon.log_level)
    # The loop re-takes the GIL after every jitted call and socket operation;
    # with busy helper threads (admin clients, snapshot packing, the start-up
    # compiler) the default 5 ms switch interval would add up to several ms
    # per tick.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    log: FilteringBoundLogger = get_logger("predictor.daemon")
    log.info(
        "starting",
        version=predictor.__version__,
        pid=os.getpid(),
        config=None if loaded.path is None else str(loaded.path),
        config_sha256=loaded.sha256,
        environment=dict(environment),
    )
    rundir = default_runtime_dir()
    rundir.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        lock_fd = acquire_lock(rundir / LOCK_NAME)
    except AlreadyRunningError as exc:
        log.error("already_running", reason=str(exc))
        return 1
    shell = build_shell(LiveConfig(loaded), log, lock_fd)
    jax.monitoring.register_event_duration_secs_listener(shell.compiles.listener)
    return Service(shell).run()
