"""The admin commands' handlers: what each command does to the running daemon.

``status`` and ``drain`` work from the first second; the others need the
engine and answer ``starting up (warming up: 3/8 graphs); try again when
ready`` until the first bucket is compiled. ``reload --reinit`` also waits
for the background compilation (it replaces the graphs being compiled).
A handler returns the reply, or None when the reply comes later (a
snapshot answers once its file is written).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from structlog.typing import FilteringBoundLogger

from predictor.admin.protocol import Request, error, ok
from predictor.daemon.commands import Handler, Reply
from predictor.daemon.engine import Engine, shed_command
from predictor.daemon.forget import forget_asset
from predictor.daemon.shedder import LevelChange
from predictor.daemon.warmup import Progress

EngineHandler = Callable[[Engine, Request, Reply], "dict[str, Any] | None"]


class Target(Protocol):
    """What the handlers act on (the service)."""

    engine: Engine | None
    progress: Progress
    log: FilteringBoundLogger

    def status(self) -> dict[str, Any]:
        """The ``status`` reply's fields."""

    def request_stop(self, reason: str) -> None:
        """Drain and exit."""

    def shed_changed(self, change: LevelChange) -> None:
        """Log and export a change of the shedding level."""


def make_handlers(target: Target) -> dict[str, Handler]:
    """The handler of every command, bound to ``target``."""

    def needs_engine(fn: EngineHandler) -> Handler:
        def handler(request: Request, future: Reply) -> dict[str, Any] | None:
            engine = target.engine
            if engine is None:
                return error(f"starting up ({target.progress.text()}); try again when ready")
            return fn(engine, request, future)

        return handler

    def snapshot(engine: Engine, request: Request, future: Reply) -> None:
        engine.snapshotter.start(request.args.get("path"), future)

    def reload(engine: Engine, request: Request, _future: Reply) -> dict[str, Any]:
        reinit = bool(request.args.get("reinit", False))
        if reinit and not target.progress.finished:
            return error(f"reload --reinit waits for the warm-up ({target.progress.text()})")
        return engine.reloader.reload(reinit=reinit, source="admin")

    def shed(engine: Engine, request: Request, _future: Reply) -> dict[str, Any]:
        return shed_command(engine.model, request.args["level"], target.shed_changed)

    def forget(engine: Engine, request: Request, _future: Reply) -> dict[str, Any]:
        table, metrics = engine.table, engine.pipeline.metrics
        asset = request.args["asset"]
        forgotten = forget_asset(table, engine.shm, metrics, target.log, asset)
        return ok(asset=asset, forgotten=forgotten)

    def drain(_request: Request, _future: Reply) -> dict[str, Any]:
        target.request_stop("admin drain")
        return ok(draining=True)

    return {
        "status": lambda _request, _future: ok(**target.status()),
        "assets": needs_engine(lambda engine, _r, _f: ok(assets=engine.assets())),
        "snapshot": needs_engine(snapshot),
        "reload": needs_engine(reload),
        "shed": needs_engine(shed),
        "forget": needs_engine(forget),
        "drain": drain,
    }
