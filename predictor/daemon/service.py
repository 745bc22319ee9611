"""predictord's service: one loop that does all the work (ARCHITECTURE.md).

Threads: the loop (everything that touches predictor state, sockets of the
tick path and the shared-memory table), the admin server (socket I/O only;
commands reach the loop through a queue), the snapshot writer pool (packing,
hashing, file I/O), the emergency-dump writer, the VRAM monitor and the
metrics HTTP server. Signal handlers only set flags and wake the loop
(``signal.set_wakeup_fd``).

One loop iteration:

1. wait (``zmq.Poller``) for ticks or a wake-up, at most ``IDLE_POLL_MS``;
2. take up to ``max_drain`` messages from the PULL socket without blocking;
   decode and validate them (a malformed message is counted by reason and
   logged, and touches nothing);
3. group the ticks per asset in arrival order into *rounds* (round k holds
   each asset's k-th tick of this drain) and step each round as one padded
   batch (``AssetTable.step``); publish one message per tick with the
   asset's next sequence number; update the shared-memory table, metrics,
   the load shedder (step latency -> signature depth) and emergency dumps;
4. run admin commands, SIGHUP reloads, periodic snapshots, gauges,
   ``STATUS=`` lines and the watchdog ping.

Stop (SIGTERM, SIGINT or ``drain``): ``STOPPING=1``; take what is already
queued in the PULL socket (until it is empty, or for at most
``DRAIN_RECEIVE_FRACTION`` of the budget against a feeder that never
pauses), close it, answer every tick received, wait for pending snapshot
writes, write the final snapshot, close the rest, exit 0.

Test hooks (environment, never set in production):
``PREDICTOR_TEST_BLOCK_LOOP_FILE`` (while this file exists the loop sleeps,
so watchdog pings stop) and ``PREDICTOR_TEST_SLOW_STEP_FILE`` (while it
exists, each batched step sleeps the number of seconds the file holds,
inside the measured step time) and ``PREDICTOR_TEST_SHED_WINDOW`` (steps per
load-shedding window instead of ``SHED_WINDOW``).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import queue
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import zmq
from structlog.typing import FilteringBoundLogger

import predictor
from predictor.admin.protocol import PeerCred, Request, error, ok, resolve_group
from predictor.admin.server import AdminServer
from predictor.config import DYNAMIC_FIELDS, FIELD_SPECS, PredictorConfig, changed_fields
from predictor.core.functional import FunctionalPredictor
from predictor.core.types import MODES
from predictor.daemon.assets import AssetLimitError, AssetTable, Part, split_sizes
from predictor.daemon.intake import MULTIPART, Intake, Received
from predictor.daemon.logging import configure, get_logger
from predictor.daemon.main import LoadedConfig, load_config
from predictor.daemon.metrics import DaemonMetrics, MetricsServer, start_http
from predictor.daemon.notify import Notifier, Watchdog
from predictor.daemon.publish import GATE_LABELS, Emergency, Publisher, row_dict
from predictor.daemon.settings import DaemonSettings
from predictor.daemon.shedder import LevelChange, LoadShedder
from predictor.daemon.vram import VramMonitor, sample_memory
from predictor.errors import ConfigError, PredictorError
from predictor.ipc.endpoints import (
    bound_endpoint,
    default_endpoints,
    ipc_path,
    make_pub,
    make_pull,
)
from predictor.ipc.endpoints import runtime_dir as default_runtime_dir
from predictor.ipc.shm import LatestWriter
from predictor.ipc.wire import REJECT_REASONS
from predictor.snapshots import (
    KERNEL_NAMES,
    AsyncSnapshotWriter,
    EmergencyDumper,
    NoSnapshotError,
    SnapshotResult,
    SnapshotStore,
    build_payload,
    restore_assets,
)

BLOCK_LOOP_ENV = "PREDICTOR_TEST_BLOCK_LOOP_FILE"
SLOW_STEP_ENV = "PREDICTOR_TEST_SLOW_STEP_FILE"
SHED_WINDOW_ENV = "PREDICTOR_TEST_SHED_WINDOW"
#: Steps per load-shedding decision window (``LoadShedder``).
SHED_WINDOW = 128
LOCK_NAME = "predictord.lock"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

#: GIL switch interval of the daemon (seconds); see ``run_service``.
GIL_SWITCH_INTERVAL_S = 0.001
#: Admin commands that change something: logged at info (queries at debug).
MUTATING_COMMANDS = frozenset({"snapshot", "reload", "shed", "drain"})
#: Most ticks of one asset taken per loop iteration: each is one batched
#: step, so this bounds an iteration's duration (admin commands, watchdog).
MAX_ROUNDS_PER_ITERATION = 32
#: Admin commands run per loop iteration (the rest wait for the next one).
MAX_COMMANDS_PER_ITERATION = 8
#: Longest idle wait of one loop iteration (ms): bounds the latency of
#: periodic work; ticks and admin commands wake the loop at once.
IDLE_POLL_MS = 50
#: Share of the drain budget spent taking queued ticks after a stop request.
DRAIN_RECEIVE_FRACTION = 0.3
#: Seconds between gauge updates, STATUS= lines and tick-rate samples.
GAUGE_PERIOD_S = 1.0
STATUS_PERIOD_S = 10.0
RATE_WINDOW_S = 10.0
#: Malformed-message log lines per second (the rest are counted, then summarised).
MALFORMED_LOG_PER_S = 20

#: Reject labels of the daemon besides the wire's reasons.
DAEMON_REASONS = (MULTIPART, "asset_limit", *GATE_LABELS)
#: Daemon settings a reload applies in place (others need a restart).
RELOADABLE_SETTINGS = frozenset(
    {"snapshot_interval_s", "snapshot_keep", "max_drain", "shed", "drain_budget_s"}
)


class StoppedDuringStartupError(Exception):
    """SIGTERM/SIGINT arrived while the graphs were compiling."""


class AlreadyRunningError(RuntimeError):
    """Another predictord holds the runtime directory's lock."""


def acquire_lock(path: Path) -> int:
    """Exclusive ``flock`` on ``path`` holding our pid; the fd stays open for our lifetime."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunningError(f"{path} is locked by pid {holder or '?'}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _step_delay_hook() -> Callable[[], float] | None:
    path = os.environ.get(SLOW_STEP_ENV, "")
    if not path:
        return None

    def delay() -> float:
        try:
            with open(path, encoding="ascii") as fh:
                return max(0.0, float(fh.read().strip() or 0.0))
        except (OSError, ValueError):
            return 0.0

    return delay


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Service:
    """The daemon; ``run()`` returns the process exit status."""

    def __init__(self, loaded: LoadedConfig, log: FilteringBoundLogger) -> None:
        self.loaded = loaded
        self.cfg: PredictorConfig = loaded.predictor
        self.settings: DaemonSettings = loaded.daemon
        self.log = log
        self.started_mono = time.monotonic()
        self.started_wall = time.time()

        self.stop_requested = False
        self.stop_reason = ""
        self.reload_requested = False
        self.commands: queue.SimpleQueue[tuple[Request, Future[dict[str, Any]]]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

        self.metrics = DaemonMetrics(reasons=(*REJECT_REASONS, *DAEMON_REASONS))
        self.metrics.up_since.set(self.started_wall)
        self.compiles = 0
        self.unexpected_compiles = 0
        self._compile_expected = True
        jax.monitoring.register_event_duration_secs_listener(self._on_compile)

        self.fp = FunctionalPredictor(self.cfg, warmup=False)
        # Any bucket size, 1 included: a batch is a lax.map of the single-asset
        # step, so an asset's bits do not depend on the batch it ran in.
        self.table = AssetTable(
            self.fp,
            capacity=self.settings.initial_capacity,
            max_assets=self.settings.max_assets,
            buckets=self.settings.batch_buckets,
            log=log,
            step_delay=_step_delay_hook(),
        )
        self.shedder = self._make_shedder(self.cfg, self.settings.shed)

        self.intake: Intake | None = None
        self.publisher: Publisher | None = None
        self.received_during_drain = 0
        self._rate: deque[tuple[float, int]] = deque()
        self._limit_logged: set[str] = set()
        self._last_dump: dict[str, float] = {}
        self._ticks_at_last_snapshot = 0
        self._last_snapshot: SnapshotResult | None = None
        self._last_snapshot_mono: float | None = None
        self._next_snapshot = time.monotonic() + self.settings.snapshot_interval_s
        self._next_gauges = 0.0
        self._next_status = 0.0
        self._block_file = os.environ.get(BLOCK_LOOP_ENV, "")

        self.lock_fd: int | None = None
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.pull: zmq.Socket[bytes] | None = None
        self.pub: zmq.Socket[bytes] | None = None
        self.poller = zmq.Poller()
        self.endpoints: dict[str, Any] = {}
        self.metrics_server: MetricsServer | None = None
        self.shm: LatestWriter | None = None
        self.admin: AdminServer | None = None
        self.notifier = Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.vram = VramMonitor(self.metrics.registry, log)
        self.store = SnapshotStore(self.settings.state_dir(), keep=self.settings.snapshot_keep)
        self.writer = AsyncSnapshotWriter(max_workers=1)
        dump_dir = self.settings.emergency_dump_dir or str(self.store.directory / "emergency")
        self.dumper = EmergencyDumper(dump_dir)
        self.io_pool = ThreadPoolExecutor(1, thread_name_prefix="daemon_io")
        self.device = self._device_string()

    @property
    def ticks_total(self) -> int:
        """Valid ticks received so far."""
        return 0 if self.intake is None else self.intake.ticks

    @property
    def predictions_total(self) -> int:
        """Predictions published so far (gate rejections not included)."""
        return 0 if self.publisher is None else self.publisher.predictions

    # ------------------------------------------------------------------ setup --
    def _device_string(self) -> str:
        dev = jax.devices()[0]
        return f"{dev.platform}:{dev.id} ({getattr(dev, 'device_kind', '')})"

    def _make_shedder(self, cfg: PredictorConfig, shed: str | int) -> LoadShedder:
        window = int(os.environ.get(SHED_WINDOW_ENV, "") or SHED_WINDOW)
        shedder = LoadShedder.from_config(cfg, window=max(1, window))
        if shed != "auto":
            assert isinstance(shed, int)
            try:
                shedder.pin(shedder.level_of_depth(shed))
            except ValueError:
                self.log.warning("shed_pin_invalid", depth=shed, ladder=list(shedder.depths))
        return shedder

    def _on_compile(self, event: str, duration_secs: float, **_: str | int) -> None:
        if event != COMPILE_EVENT:
            return
        self.compiles += 1
        if not (self._compile_expected or self.table.compiling):
            self.unexpected_compiles += 1
            self.metrics.recompiles.inc()
            self.log.warning("unexpected_compile", duration_s=round(duration_secs, 3))

    def _bind(self) -> None:
        defaults = default_endpoints()
        ticks = self.settings.ticks_endpoint or defaults.ticks
        preds = self.settings.predictions_endpoint or defaults.predictions
        self.ctx = zmq.Context()
        self.pull = make_pull(
            self.ctx, ticks, max_msg_size=self.settings.max_msg_bytes, rcvhwm=self.settings.rcvhwm
        )
        self.pub = make_pub(self.ctx, preds, sndhwm=self.settings.sndhwm)
        self.intake = Intake(
            self.pull,
            self.metrics,
            self.log,
            max_msg_bytes=self.settings.max_msg_bytes,
            max_rounds=MAX_ROUNDS_PER_ITERATION,
            log_per_s=MALFORMED_LOG_PER_S,
        )
        self.poller.register(self.pull, zmq.POLLIN)
        self.poller.register(self._wake_r.fileno(), zmq.POLLIN)
        admin = Path(self.settings.admin_socket) if self.settings.admin_socket else defaults.admin
        self.endpoints = {
            "ticks": bound_endpoint(self.pull),
            "predictions": bound_endpoint(self.pub),
            "metrics": None,
            "shm": self.settings.shm_name or None,
            "admin": str(admin),
        }
        if self.settings.metrics_port >= 0:
            self.metrics_server = start_http(
                self.metrics.registry, self.settings.metrics_host, self.settings.metrics_port
            )
            self.endpoints["metrics"] = self.metrics_server.url
        self.log.info("sockets_bound", **self.endpoints)

    def _restore(self) -> None:
        if not self.settings.restore:
            self.log.info(
                "cold_start", reason="restore disabled", snapshot_dir=str(self.store.directory)
            )
            return
        template = self.fp.init_state()
        try:
            loaded = self.store.load_latest(
                self.cfg.schema_version,
                restore=lambda p: restore_assets(p, template, config=self.cfg),
            )
        except NoSnapshotError as exc:
            self.log.info("cold_start", reason=str(exc), snapshot_dir=str(self.store.directory))
            return
        self.table.restore(loaded.restored)
        self.log.info(
            "restored",
            path=str(loaded.path),
            assets=len(self.table),
            capacity=self.table.capacity,
            ticks=int(self.table.seq.sum()),
        )
        self._last_snapshot = SnapshotResult("success", str(loaded.path))
        self._last_snapshot_mono = time.monotonic()

    def _open_shm(self) -> None:
        if not self.settings.shm_name:
            return
        self.shm = LatestWriter(self.settings.shm_name, max(self.table.capacity, 1))
        n = len(self.table)
        if n == 0:
            return
        # Restored assets: publish their last known prediction at once.
        last = jax.device_get(self.table.stacked.last_output)
        for slot, asset in enumerate(self.table.names):
            if self.table.seq[slot] > 0:
                row = row_dict(last, slot)
                self.shm.write_result(
                    slot,
                    asset,
                    seq=int(self.table.seq[slot]),
                    ts=int(self.table.last_ts[slot]),
                    latency_ns=0,
                    result=row,
                )

    def _warmup(self, *, ping: bool) -> float:
        start = time.perf_counter()
        self._compile_expected = True

        def progress(done: int, total: int) -> None:
            self.log.info("warmup_progress", graphs=done, total=total)
            if ping:
                self.watchdog.maybe_ping()
            elif self.stop_requested:
                # Stopped while starting: nothing was stepped, nothing to save.
                raise StoppedDuringStartupError(self.stop_reason)

        self.table.warm_gather_scatter()
        self.table.warmup(progress)
        self._compile_expected = False
        return time.perf_counter() - start

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            self.stop_requested = True
            self.stop_reason = signal.Signals(signum).name

        def hup(_signum: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    # -------------------------------------------------------------------- run --
    def run(self) -> int:
        """Start, serve until stopped, drain; returns the exit status.

        The caller holds the runtime directory's lock (``acquire_lock``).
        """
        self._install_signals()
        try:
            self._bind()
            self._restore()
            self._open_shm()
            assert self.pub is not None
            self.publisher = Publisher(self.pub, self.shm, self.metrics)
            duration = self._warmup(ping=False)
            self.log.info(
                "warmup_done",
                duration_s=round(duration, 3),
                buckets=list(self.table.buckets),
                depths=list(self.fp.depths),
                compiles=self.compiles,
            )
            self._start_admin()
            self.vram.start()
        except StoppedDuringStartupError as exc:
            self.log.info("stopped_during_startup", reason=str(exc))
            self.notifier.stopping()
            self._close_all()
            return 0
        except Exception as exc:
            self.log.exception("startup_failed", error=repr(exc))
            self._close_all()
            return 1
        self._export_gauges()
        self.notifier.ready(self._status_line())
        self.log.info(
            "ready",
            assets=len(self.table),
            device=self.device,
            config=None if self.loaded.path is None else str(self.loaded.path),
            pid=os.getpid(),
        )
        try:
            while not self.stop_requested:
                self._iterate()
            return self._drain()
        except Exception as exc:
            self.log.exception("loop_failed", error=repr(exc))
            self._close_all()
            return 1

    def _start_admin(self) -> None:
        try:
            gid = resolve_group(self.settings.admin_group)
        except KeyError:
            self.log.warning("admin_group_unknown", group=self.settings.admin_group)
            gid = None
        self.admin = AdminServer(self.endpoints["admin"], self._submit, log=self.log, admin_gid=gid)
        # Served from this loop (bounded events per iteration), not from a
        # thread: a second Python thread would compete with prediction for
        # the GIL under a flood of admin connections.
        self.admin.start(thread=False)
        self.poller.register(self.admin.fileno(), zmq.POLLIN)

    def _iterate(self) -> None:
        if self._block_file:
            while os.path.exists(self._block_file) and not self.stop_requested:
                time.sleep(0.05)
        timeout = 0 if not self.commands.empty() or self.reload_requested else IDLE_POLL_MS
        events = dict(self.poller.poll(timeout))
        if self._wake_r.fileno() in events:
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass
        assert self.intake is not None
        items = self.intake.receive(self.settings.max_drain)
        if items:
            self._process(items)
        self._serve_admin()
        self._handle_commands()
        if self.reload_requested:
            self.reload_requested = False
            self.log.info("sighup_reload")
            self._reload(reinit=False, source="SIGHUP")
        self._periodic()
        self.watchdog.maybe_ping()

    # ------------------------------------------------------------------ stepping --
    def _process(self, items: list[Received]) -> None:
        table = self.table
        ids = table.ids
        rounds: list[list[int]] = []
        slots: list[int] = [0] * len(items)
        seen: dict[int, int] = {}
        for i, (tick, _) in enumerate(items):
            slot = ids.get(tick.asset)
            if slot is None:
                slot = self._add_asset(tick.asset)
                if slot is None:
                    continue
            slots[i] = slot
            k = seen.get(slot, 0)
            seen[slot] = k + 1
            if k == len(rounds):
                rounds.append([i])
            else:
                rounds[k].append(i)
        for rnd in rounds:
            self._step_round(rnd, items, slots)
            self.watchdog.maybe_ping()  # stepping is progress

    def _add_asset(self, asset: str) -> int | None:
        try:
            slot = self.table.add(asset)
        except AssetLimitError:
            self.metrics.reject("asset_limit")
            if asset not in self._limit_logged and len(self._limit_logged) < 100:
                self._limit_logged.add(asset)
                self.log.warning("asset_refused", asset=asset, max_assets=self.table.max_assets)
            return None
        self.metrics.assets.set(len(self.table))
        self.log.info("asset_added", asset=asset, slot=slot, capacity=self.table.capacity)
        return slot

    def _step_round(self, rnd: list[int], items: list[Received], slots: list[int]) -> None:
        """Step one round (distinct assets) as bucket-sized parts on the worker threads."""
        chunks: list[list[int]] = []
        lo = 0
        for size in split_sizes(len(rnd), self.table.buckets):
            chunks.append(rnd[lo : lo + size])
            lo += size
        received = [[items[i] for i in chunk] for chunk in chunks]
        parts = []
        for chunk, recv in zip(chunks, received, strict=True):
            ticks = [r[0] for r in recv]
            parts.append(
                Part(
                    [slots[i] for i in chunk],
                    [t.y for t in ticks],
                    [t.ref for t in ticks],
                    [t.ts for t in ticks],
                )
            )
        results = self.table.step_parts(parts, time.time_ns(), self.shedder.depth)
        assert self.publisher is not None
        for part, recv, res in zip(parts, received, results, strict=True):
            self.metrics.step_latency.observe(res.latency_ns * 1e-9)
            self.metrics.batch_size.observe(res.n)
            change = self.shedder.observe(res.latency_ns)
            if change is not None:
                self._shed_changed(change)
            entered = self.publisher.publish(recv, list(part.slots), res, self.table)
            if entered:
                self._emergency(entered)

    def _emergency(self, entered: list[Emergency]) -> None:
        """Forensic dumps of assets that entered Emergency mode (rate-limited per asset)."""
        now = time.monotonic()
        due = []
        for e in entered:
            last = self._last_dump.get(e.asset)
            if last is None or now - last >= self.dumper.min_interval_s:
                self._last_dump[e.asset] = now
                due.append(e)
        if not due:
            return
        stacked = self.table.stacked
        buffers, cusum = jax.device_get((stacked.buffer, stacked.cusum))
        for e in due:
            history = np.asarray([np.asarray(leaf)[e.slot] for leaf in cusum], dtype=np.float64)
            buffer = np.array(np.asarray(buffers)[e.slot], copy=True)
            extra = {"slot": e.slot, "seq": int(self.table.seq[e.slot]), "ts": e.ts}
            self.log.warning("emergency_entered", asset=e.asset, seq=extra["seq"])
            self.io_pool.submit(self._dump, e.asset, e.result, buffer, history, extra)

    def _dump(
        self,
        asset: str,
        result: dict[str, Any],
        buffer: np.ndarray[Any, Any],
        history: np.ndarray[Any, Any],
        extra: dict[str, Any],
    ) -> None:
        try:
            self.dumper.dump(
                asset, result, signal_buffer=buffer, regime_history=history, extra=extra
            )
        except OSError as exc:
            self.log.error("emergency_dump_failed", asset=asset, error=str(exc))

    def _shed_changed(self, change: LevelChange) -> None:
        if change.reason in ("latency", "jitter", "recovery"):
            direction = "up" if change.new_level < change.old_level else "down"
            self.metrics.shed_switches.labels(direction=direction).inc()
        self.log.info(
            "shed_level_changed",
            old_level=change.old_level,
            new_level=change.new_level,
            old_depth=change.old_depth,
            new_depth=change.new_depth,
            reason=change.reason,
            ewma_ns=round(change.ewma_ns),
            jitter_p99_ns=_finite(change.jitter_p99_ns),
        )
        self._export_shedding()

    # ---------------------------------------------------------------- periodic --
    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next_gauges:
            self._next_gauges = now + GAUGE_PERIOD_S
            self._rate.append((now, self.ticks_total))
            while self._rate and now - self._rate[0][0] > RATE_WINDOW_S:
                self._rate.popleft()
            self._export_gauges()
        if now >= self._next_status:
            self._next_status = now + STATUS_PERIOD_S
            self.notifier.status(self._status_line())
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.settings.snapshot_interval_s
            if self.writer.pending() == 0 and self.ticks_total != self._ticks_at_last_snapshot:
                self._snapshot(None, None)

    def tick_rate(self) -> float:
        """Ticks per second over the last ~10 s."""
        if len(self._rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def _export_shedding(self) -> None:
        s = self.shedder
        self.metrics.set_shedding(
            s.level,
            s.depth,
            s.jitter_p95_ns if math.isfinite(s.jitter_p95_ns) else 0.0,
            s.jitter_p99_ns if math.isfinite(s.jitter_p99_ns) else 0.0,
            s.ewma_ns if math.isfinite(s.ewma_ns) else 0.0,
        )

    def _export_gauges(self) -> None:
        self.metrics.assets.set(len(self.table))
        self.metrics.set_mode_counts(self.table.mode_counts(MODES))
        self._export_shedding()
        if self._last_snapshot_mono is not None:
            self.metrics.snapshot_age.set(time.monotonic() - self._last_snapshot_mono)

    def _status_line(self) -> str:
        return (
            f"assets={len(self.table)} tick_rate={self.tick_rate():.1f}/s "
            f"shed_level={self.shedder.level} depth={self.shedder.depth}"
        )

    # --------------------------------------------------------------- snapshots --
    def _payload(self) -> dict[str, Any]:
        return build_payload(
            config=self.cfg,
            global_state={
                "ticks_total": self.ticks_total,
                "predictions_total": self.predictions_total,
                "shed_level": self.shedder.level,
            },
            telemetry={},
            flags={},
            kernels=dict.fromkeys(KERNEL_NAMES),
            assets=self.table.to_batch(),
        )

    def _snapshot(self, path: str | None, reply: Future[dict[str, Any]] | None) -> None:
        """Copy the state now (consistent cut), write it on the pool."""
        start = time.perf_counter()
        try:
            payload = self._payload()
        except Exception as exc:
            self.metrics.snapshot_failures.inc()
            self.log.error("snapshot_payload_failed", error=repr(exc))
            if reply is not None:
                reply.set_result(error(f"snapshot failed: {exc}"))
            return
        copy_s = time.perf_counter() - start
        self._ticks_at_last_snapshot = self.ticks_total
        if path is None:
            future = self.store.submit(self.writer, payload)
        else:
            target = Path(path)
            if not target.is_absolute():
                target = self.store.directory / target
            future = self.writer.submit(target, payload)
        self.log.info("snapshot_started", copy_s=round(copy_s, 6), assets=len(self.table))

        def done(f: Future[SnapshotResult]) -> None:
            result = f.result()
            if result.status == "success":
                self._last_snapshot = result
                self._last_snapshot_mono = time.monotonic()
                self.metrics.snapshots.inc()
                self.metrics.snapshot_duration.set(result.duration_s)
            elif result.status == "failed":
                self.metrics.snapshot_failures.inc()
            if reply is not None:
                if result.status == "success":
                    reply.set_result(
                        ok(
                            path=result.path,
                            size=result.size,
                            checksum=result.checksum,
                            duration_s=result.duration_s + copy_s,
                        )
                    )
                else:
                    reply.set_result(
                        error(f"snapshot {result.status}: {result.error or result.path}")
                    )

        future.add_done_callback(done)

    # ----------------------------------------------------------------- admin --
    def _submit(self, request: Request, cred: PeerCred) -> Future[dict[str, Any]]:
        """From ``AdminServer.poll_once`` (in the loop): queue a command (vram: I/O pool)."""
        future: Future[dict[str, Any]] = Future()
        audit = self.log.info if request.cmd in MUTATING_COMMANDS else self.log.debug
        audit("admin_command", cmd=request.cmd, peer_uid=cred.uid, peer_pid=cred.pid)
        if request.cmd == "vram":
            self.io_pool.submit(self._vram, future)
            return future
        self.commands.put((request, future))
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")
        return future

    def _serve_admin(self) -> None:
        if self.admin is not None:
            self.admin.poll_once(0.0)

    def _handle_commands(self) -> None:
        # Bounded per iteration, and a waiting tick goes first: a tick that
        # arrives during a burst of admin requests waits for one command, not
        # for MAX_COMMANDS_PER_ITERATION (measured: 50 abusive clients raised
        # the p99 of receipt -> publication from ~6 ms to 8-22 ms otherwise).
        assert self.intake is not None
        for k in range(MAX_COMMANDS_PER_ITERATION):
            if k and self.intake.has_more():
                return
            try:
                request, future = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                reply = self._command(request, future)
            except Exception as exc:
                self.log.exception("admin_command_failed", cmd=request.cmd, error=repr(exc))
                reply = error(f"{request.cmd} failed: {type(exc).__name__}: {exc}")
            if reply is not None:
                future.set_result(reply)

    def _command(self, request: Request, future: Future[dict[str, Any]]) -> dict[str, Any] | None:
        cmd, args = request.cmd, request.args
        if cmd == "status":
            return ok(**self.status())
        if cmd == "assets":
            return ok(assets=self.assets())
        if cmd == "snapshot":
            self._snapshot(args.get("path"), future)
            return None
        if cmd == "reload":
            return self._reload(reinit=bool(args.get("reinit", False)), source="admin")
        if cmd == "shed":
            return self._shed(args["level"])
        if cmd == "drain":
            self.stop_requested = True
            self.stop_reason = "admin drain"
            return ok(draining=True)
        return error(f"unknown command {cmd!r}")

    def _vram(self, future: Future[dict[str, Any]]) -> None:
        try:
            data = sample_memory()
            future.set_result(
                ok(
                    devices=data["devices"],
                    nvidia_smi=data["nvidia_smi"],
                    rss_bytes=data["rss_bytes"],
                )
            )
        except Exception as exc:
            future.set_result(error(f"vram failed: {exc}"))

    def status(self) -> dict[str, Any]:
        """The ``status`` reply's fields (protocol.py)."""
        s = self.shedder
        snap = self._last_snapshot
        return {
            "uptime_s": time.monotonic() - self.started_mono,
            "version": predictor.__version__,
            "pid": os.getpid(),
            "endpoints": dict(self.endpoints),
            "assets": len(self.table),
            "capacity": self.table.capacity,
            "tick_rate": self.tick_rate(),
            "ticks": self.ticks_total,
            "predictions": self.predictions_total,
            "malformed_messages": 0 if self.intake is None else self.intake.malformed,
            "modes": self.table.mode_counts(MODES),
            "shed": {
                "level": s.level,
                "depth": s.depth,
                "pinned": s.pinned is not None,
                "jitter_p95_ns": _finite(s.jitter_p95_ns),
                "jitter_p99_ns": _finite(s.jitter_p99_ns),
                "ewma_ns": _finite(s.ewma_ns),
                "switches": s.switches,
            },
            "snapshot": {
                "path": None if snap is None else snap.path,
                "age_s": None
                if self._last_snapshot_mono is None
                else time.monotonic() - self._last_snapshot_mono,
            },
            "config": {
                "path": None if self.loaded.path is None else str(self.loaded.path),
                "sha256": self.loaded.sha256,
                "sensitivities": {k: getattr(self.cfg, k) for k in DYNAMIC_FIELDS},
            },
            "device": self.device,
            "memory": self.vram.summary(),
            "compiles": {"total": self.compiles, "after_warmup": self.unexpected_compiles},
        }

    def assets(self) -> list[dict[str, Any]]:
        """The ``assets`` reply: one entry per asset, in slot order."""
        n = len(self.table)
        if n == 0:
            return []
        last = self.table.stacked.last_output
        weights, holder = jax.device_get((last.weights, last.holder_exponent))
        weights = np.asarray(weights)[:n].tolist()
        holder = np.asarray(holder)[:n].tolist()
        out = []
        for slot, asset in enumerate(self.table.names):
            code = int(self.table.last_mode[slot])
            out.append(
                {
                    "asset": asset,
                    "slot": slot,
                    "seq": int(self.table.seq[slot]),
                    "last_ts": int(self.table.last_ts[slot]),
                    "mode": MODES[code] if code >= 0 else None,
                    "weights": weights[slot],
                    "holder_exponent": holder[slot],
                }
            )
        return out

    def _shed(self, level: str | int) -> dict[str, Any]:
        s = self.shedder
        if level == "auto":
            s.pin(None)
        else:
            assert isinstance(level, int)
            try:
                idx = s.level_of_depth(level)
            except ValueError:
                return error(f"shed: depth {level} is not on the ladder {list(s.depths)}")
            change = s.pin(idx)
            if change is not None:
                self._shed_changed(change)
        self._export_shedding()
        self.log.info("shed_set", level=s.level, depth=s.depth, pinned=s.pinned is not None)
        return ok(level=s.level, depth=s.depth, pinned=s.pinned is not None)

    # ---------------------------------------------------------------- reload --
    def _reload(self, *, reinit: bool, source: str) -> dict[str, Any]:
        if self.loaded.path is None:
            return error("running on the embedded defaults: there is no config file to reload")
        try:
            new = load_config(self.loaded.path)
        except (ConfigError, OSError) as exc:
            self.log.warning("reload_refused", source=source, reason=str(exc))
            return error(f"invalid config, the running one is kept: {exc}")
        self.notifier.reloading()
        changed = changed_fields(self.cfg, new.predictor)
        dynamic = [k for k in changed if FIELD_SPECS[k].dynamic]
        layout = [k for k in changed if not FIELD_SPECS[k].dynamic]
        applied: list[str] = []
        reinitialised = False
        try:
            if layout and reinit:
                self._reinit(new.predictor)
                applied = changed
                reinitialised = True
            elif dynamic:
                cfg = self.cfg.replace(**{k: getattr(new.predictor, k) for k in dynamic})
                self.fp.set_sensitivities(cfg)
                self.shedder.retune(cfg)
                self.cfg = cfg
                applied = list(dynamic)
        except (PredictorError, ValueError) as exc:
            self.notifier.ready(self._status_line())
            self.log.error("reload_failed", source=source, reason=str(exc))
            return error(f"reload failed, the running config is kept: {exc}")
        settings_applied, restart = self._reload_settings(new.daemon)
        self.loaded = LoadedConfig(self.cfg, self.settings, self.loaded.path, new.sha256)
        self.notifier.ready(self._status_line())
        self.log.info(
            "config_reloaded",
            source=source,
            applied=applied + settings_applied,
            requires_reinit=layout,
            reinitialised=reinitialised,
            requires_restart=restart,
        )
        return ok(
            applied=applied + settings_applied,
            requires_reinit=layout,
            reinitialised=reinitialised,
            requires_restart=restart,
        )

    def _reload_settings(self, new: DaemonSettings) -> tuple[list[str], list[str]]:
        old = self.settings.model_dump()
        fresh = new.model_dump()
        changed = [k for k in fresh if fresh[k] != old[k]]
        inplace = [k for k in changed if k in RELOADABLE_SETTINGS]
        restart = [f"daemon.{k}" for k in changed if k not in RELOADABLE_SETTINGS]
        if inplace:
            self.settings = self.settings.model_copy(update={k: fresh[k] for k in inplace})
            if "snapshot_interval_s" in inplace:
                self._next_snapshot = time.monotonic() + self.settings.snapshot_interval_s
            if "snapshot_keep" in inplace:
                self.store.keep = self.settings.snapshot_keep
            if "shed" in inplace:
                shed = self.settings.shed
                self._shed("auto" if shed == "auto" else int(shed))
        return [f"daemon.{k}" for k in inplace], restart

    def _reinit(self, cfg: PredictorConfig) -> None:
        """Layout change: new graphs, cold states for every asset (ids and seq kept)."""
        start = time.perf_counter()
        self._compile_expected = True  # new graphs; _warmup clears the flag
        fp = FunctionalPredictor(cfg, warmup=False)
        self.table.reset_states(fp)
        self.fp = fp
        self.cfg = cfg
        pinned = self.shedder.pinned
        depth = self.shedder.depths[pinned] if pinned is not None else None
        self.shedder = self._make_shedder(cfg, "auto" if depth is None else depth)
        self._warmup(ping=True)
        self.log.info(
            "reinitialised",
            duration_s=round(time.perf_counter() - start, 3),
            assets=len(self.table),
        )

    # ------------------------------------------------------------------ stop --
    def _drain(self) -> int:
        start = time.monotonic()
        budget = self.settings.drain_budget_s
        self.notifier.stopping(f"draining ({self.stop_reason})")
        self.log.info("drain_started", reason=self.stop_reason, budget_s=budget)
        received_before = self.ticks_total
        receive_until = start + DRAIN_RECEIVE_FRACTION * budget
        cut = False
        assert self.intake is not None
        while True:
            items = self.intake.receive(self.settings.max_drain)
            if items:
                self._process(items)
            self._serve_admin()
            self._handle_commands()
            self.watchdog.maybe_ping()
            if not items and not self.intake.has_more():
                break
            if time.monotonic() > receive_until:
                cut = True
                break
        assert self.pull is not None
        self.poller.unregister(self.pull)
        self.pull.close(linger=0)
        self.pull = None
        self.received_during_drain = self.ticks_total - received_before
        self.log.info(
            "intake_closed",
            ticks_received=self.ticks_total,
            received_during_drain=self.received_during_drain,
            predictions=self.predictions_total,
            cut_by_budget=cut,
        )
        remaining = max(0.5, budget - (time.monotonic() - start) - 1.0)
        if not self.writer.wait(timeout=remaining):
            self.log.error("snapshot_wait_timeout", timeout_s=round(remaining, 3))
        status = 0
        try:
            result = self.store.save(self._payload())
            self._last_snapshot = result
            self.log.info(
                "final_snapshot", path=result.path, size=result.size, assets=len(self.table)
            )
        except Exception as exc:
            self.metrics.snapshot_failures.inc()
            self.log.error("final_snapshot_failed", error=repr(exc))
            status = 1
        duration = time.monotonic() - start
        self.metrics.shutdown_duration.set(duration)
        self.log.info(
            "shutdown_complete",
            duration_s=round(duration, 3),
            ticks_received=self.ticks_total,
            predictions=self.predictions_total,
            rejected_by_gate=0 if self.publisher is None else self.publisher.rejections,
            exit_status=status,
        )
        self._close_all()
        return status

    def _close_all(self) -> None:
        if self.admin is not None:
            with contextlib.suppress(KeyError, zmq.ZMQError):
                self.poller.unregister(self.admin.fileno())
            self.admin.close()
            self.admin = None
        self.vram.stop()
        self.writer.close(timeout=5.0)
        self.io_pool.shutdown(wait=True)
        self.table.close()
        if self.pull is not None:
            self.pull.close(linger=0)
            self.pull = None
        if self.pub is not None:
            self.pub.close(linger=1000)
            self.pub = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        for name in ("ticks", "predictions"):
            path = ipc_path(str(self.endpoints.get(name, "")))
            # libzmq leaves the socket files of closed ipc listeners behind.
            if path is not None and path.is_socket():
                path.unlink(missing_ok=True)
        if self.shm is not None:
            self.shm.close(unlink=True)
            self.shm = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.notifier.close()
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


# ---------------------------------------------------------------- helpers --


def run_service(loaded: LoadedConfig, *, environment: Mapping[str, str]) -> int:
    """Entry from ``main``: configure logs, run the service, return the exit status."""
    configure()
    # The loop re-takes the GIL after every jitted call and socket operation;
    # with busy helper threads (admin clients, snapshot packing) the default
    # 5 ms switch interval would add up to several ms per tick.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    log = get_logger("predictor.daemon")
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
    service = Service(loaded, log)
    service.lock_fd = lock_fd
    return service.run()
