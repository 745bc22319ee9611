"""The prediction engine: the parts that exist once the model is built and restored.

``build_engine`` (on the start-up thread) builds the model on the config in
force, the asset table, restores the newest verified snapshot, opens the
shared-memory table (publishing the restored assets' last predictions at
once; the loop refreshes its heartbeat every iteration and after every
round, so a reader tells a quiet daemon from a dead one), and wires the
tick pipeline, the snapshotter and the reloader. The
loop adopts the engine once its first bucket is compiled; until then it
serves only the admin socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.admin.protocol import error, ok
from predictor.core.types import MODES
from predictor.daemon.assets import AssetTable
from predictor.daemon.emergency import EmergencyDumps
from predictor.daemon.loading import LiveConfig
from predictor.daemon.model import Model
from predictor.daemon.pipeline import TickPipeline
from predictor.daemon.publish import Publisher, row_dict
from predictor.daemon.reload import Reloader
from predictor.daemon.shedder import LevelChange
from predictor.daemon.shell import Shell
from predictor.daemon.snapshotting import Snapshotter
from predictor.ipc.shm import LatestWriter
from predictor.snapshots import (
    KERNEL_NAMES,
    NoSnapshotError,
    SnapshotResult,
    build_payload,
    restore_assets,
)


@dataclass
class Engine:
    """The running parts (see the module docstring)."""

    model: Model
    table: AssetTable
    shm: LatestWriter | None
    pipeline: TickPipeline
    snapshotter: Snapshotter
    reloader: Reloader

    def assets(self) -> list[dict[str, Any]]:
        """The ``assets`` reply: one entry per asset, in slot order."""
        table = self.table
        n = len(table)
        if n == 0:
            return []
        last = table.last_outputs()
        weights, holder = last.weights, last.holder_exponent
        weights = np.asarray(weights)[:n].tolist()
        holder = np.asarray(holder)[:n].tolist()
        out = []
        for slot, asset in enumerate(table.names):
            code = int(table.last_mode[slot])
            out.append(
                {
                    "asset": asset,
                    "slot": slot,
                    "seq": int(table.seq[slot]),
                    "last_ts": int(table.last_ts[slot]),
                    "mode": MODES[code] if code >= 0 else None,
                    "weights": weights[slot],
                    "holder_exponent": holder[slot],
                }
            )
        return out

    def heartbeat(self) -> None:
        """Tell shared-memory readers the writer is alive (cheap: one 8-byte store)."""
        if self.shm is not None:
            self.shm.heartbeat()

    def close(self) -> None:
        """Stop the table's workers; unlink the shared-memory table."""
        self.table.close()
        if self.shm is not None:
            self.shm.close(unlink=True)
            self.shm = None


def shed_command(
    model: Model, level: str | int, on_change: Callable[[LevelChange], None]
) -> dict[str, Any]:
    """Pin the shedder at depth ``level`` (and the configured K) or release it (``"auto"``).

    Returns the admin reply.
    """
    if level == "auto":
        model.pin(None)
    else:
        try:
            change = model.pin(int(level))
        except ValueError:
            ladder = list(model.shedder.depths)
            return error(f"shed: depth {level} is not on the ladder {ladder}")
        if change is not None:
            on_change(change)
    s = model.shedder
    return ok(
        level=s.level, depth=s.depth, pinned=s.pinned is not None, refit_interval=s.refit_interval
    )


def _restore(
    shell: Shell, live: LiveConfig, model: Model, table: AssetTable
) -> SnapshotResult | None:
    store, log = shell.store, shell.log
    if not live.settings.restore:
        log.info("cold_start", reason="restore disabled", snapshot_dir=str(store.directory))
        return None
    template = model.fp.init_state()
    try:
        loaded = store.load_latest(
            model.cfg.schema_version,
            # Host arrays: the table places the state on the device once.
            restore=lambda p: restore_assets(p, template, config=model.cfg, host=True),
        )
    except NoSnapshotError as exc:
        log.info("cold_start", reason=str(exc), snapshot_dir=str(store.directory))
        return None
    table.restore(loaded.restored)
    log.info(
        "restored",
        path=str(loaded.path),
        assets=len(table),
        capacity=table.capacity,
        ticks=int(table.seq.sum()),
    )
    return SnapshotResult("success", str(loaded.path))


def _open_shm(name: str, table: AssetTable) -> LatestWriter | None:
    if not name:
        return None
    shm = LatestWriter(name, max(table.capacity, 1))
    if len(table) == 0:
        return shm
    # Restored assets: publish their last known prediction at once.
    last = table.last_outputs()
    for slot, asset in enumerate(table.names):
        if table.seq[slot] > 0:
            shm.write_result(
                slot,
                asset,
                seq=int(table.seq[slot]),
                ts=int(table.last_ts[slot]),
                latency_ns=0,
                result=row_dict(last, slot),
            )
    return shm


def _progress(shell: Shell, shm: LatestWriter | None) -> None:
    """A round was stepped: the watchdog ping and the shared-memory heartbeat."""
    shell.telemetry.ping()
    if shm is not None:
        shm.heartbeat()


def build_engine(
    shell: Shell,
    live: LiveConfig,
    *,
    on_shed: Callable[[LevelChange], None],
    status_line: Callable[[], str],
) -> Engine:
    """Build, restore and wire the engine (no step graph compiled yet)."""
    settings, log = live.settings, shell.log
    model = Model(
        live.predictor,
        shed=settings.shed,
        window=settings.shed_window,
        log=log,
        refit_doublings=settings.shed_refit_doublings,
    )
    with shell.compiles.expected():  # cold states and restores run small eager graphs
        table = AssetTable(
            model.fp,
            capacity=settings.initial_capacity,
            max_assets=settings.max_assets,
            buckets=settings.batch_buckets,
            log=log,
        )
        restored = _restore(shell, live, model, table)
        shm = _open_shm(settings.shm_name, table)
    publisher = Publisher(shell.pub, shm, shell.metrics)
    shell.intake.on_reject = lambda rejects: publisher.publish_rejects(rejects, table)
    dumps = EmergencyDumps(shell.dumper, shell.io_pool, log)
    pipeline = TickPipeline(
        shell.intake,
        publisher,
        table,
        model,
        dumps,
        shell.metrics,
        shell.compiles,
        log,
        ready_buckets=(),
        on_shed=on_shed,
        on_round=lambda: _progress(shell, shm),
        rounds=shell.rounds,
    )

    def payload() -> dict[str, Any]:
        return build_payload(
            config=model.cfg,
            global_state={
                "ticks_total": pipeline.ticks,
                "predictions_total": pipeline.predictions,
                "shed_level": model.shedder.level,
            },
            telemetry={},
            flags={},
            kernels=dict.fromkeys(KERNEL_NAMES),
            assets=table.to_batch(),
        )

    snapshotter = Snapshotter(
        shell.store,
        shell.writer,
        shell.mailbox,
        shell.metrics,
        log,
        payload=payload,
        ticks=lambda: pipeline.ticks,
        interval_s=settings.snapshot_interval_s,
        restored=restored,
    )
    reloader = Reloader(
        live,
        model,
        table,
        snapshotter,
        shell.notifier,
        shell.compiles,
        log,
        set_shed=lambda shed: shed_command(model, shed, on_shed),
        status_line=status_line,
        progress=shell.telemetry.ping,
    )
    shell.metrics.assets.set(len(table))
    log.info("engine_built", assets=len(table), capacity=table.capacity)
    return Engine(model, table, shm, pipeline, snapshotter, reloader)
