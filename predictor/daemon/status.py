"""What the daemon says about itself: the ``status`` reply, ``STATUS=`` lines, gauges.

The phase (``phase``): ``starting`` (nothing compiled yet), ``warming up:
3/8 graphs`` (graphs compiling; ticks are served once the first bucket is
done, ``warmup.ready``), ``running``, ``draining``. Before the engine
exists the reply carries no shedder (``shed: null``), no assets and no
snapshot.
"""

from __future__ import annotations

import os
import time
from typing import Any

import predictor
from predictor.config import DYNAMIC_FIELDS
from predictor.core.types import MODES
from predictor.daemon.engine import Engine
from predictor.daemon.shell import Shell
from predictor.daemon.telemetry import monotonic_age, shed_fields
from predictor.daemon.warmup import Progress


def phase(stopping: bool, serving: bool, progress: Progress) -> str:
    """The daemon's phase (see the module docstring)."""
    if stopping:
        return "draining"
    if not serving and not progress.done:
        return "starting"
    return progress.text()


def status_line(shell: Shell, engine: Engine | None, state: str) -> str:
    """The ``STATUS=`` text: assets, tick rate and shedding (and the phase unless running)."""
    if engine is None:
        return state
    s = engine.model.shedder
    text = f"assets={len(engine.table)} tick_rate={shell.telemetry.rate.rate():.1f}/s"
    text += f" shed_level={s.level} depth={s.depth} refit_interval={s.refit_interval}"
    return text if state == "running" else f"{text} {state}"


def status_reply(
    shell: Shell, engine: Engine | None, progress: Progress, state: str, device: str
) -> dict[str, Any]:
    """The ``status`` reply's fields (``predictor.admin.protocol``)."""
    live, compiles = shell.live, shell.compiles
    out: dict[str, Any] = {
        "uptime_s": time.monotonic() - shell.started_mono,
        "version": predictor.__version__,
        "pid": os.getpid(),
        "state": state,
        "warmup": {"graphs": progress.done, "total": progress.total, "ready": progress.ready},
        "endpoints": dict(shell.endpoints),
        "assets": 0,
        "capacity": 0,
        "tick_rate": shell.telemetry.rate.rate(),
        "ticks": shell.intake.ticks,
        "predictions": 0,
        "malformed_messages": shell.intake.malformed,
        "modes": dict.fromkeys(MODES, 0),
        "shed": None,
        "snapshot": {"path": None, "age_s": None},
        "config": {
            "path": None if live.path is None else str(live.path),
            "sha256": live.loaded.sha256,
            "sensitivities": {k: getattr(live.predictor, k) for k in DYNAMIC_FIELDS},
        },
        "device": device,
        "memory": shell.vram.summary(),
        "compiles": {"total": compiles.total, "after_warmup": compiles.unexpected},
    }
    if engine is not None:
        out["assets"] = len(engine.table)
        out["capacity"] = engine.table.capacity
        out["predictions"] = engine.pipeline.predictions
        out["modes"] = engine.table.mode_counts(MODES)
        out["shed"] = shed_fields(engine.model.shedder)
        out["snapshot"] = engine.snapshotter.status()
    return out


def export_gauges(shell: Shell, engine: Engine) -> None:
    """Assets, mode counts, shedding and snapshot age gauges."""
    metrics = shell.metrics
    metrics.assets.set(len(engine.table))
    metrics.set_mode_counts(engine.table.mode_counts(MODES))
    shell.telemetry.export_shedding(engine.model.shedder)
    age = monotonic_age(engine.snapshotter.last_mono)
    if age is not None:
        metrics.snapshot_age.set(age)
