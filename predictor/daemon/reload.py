"""Config reload (admin ``reload``, SIGHUP): what can change in place, and what cannot.

The file is read and validated first; an invalid file changes nothing.
Then, by kind of field:

* predictor *sensitivities* (``FieldSpec.dynamic``) apply in place: they
  reach the graphs as traced parameters, so nothing recompiles;
* predictor *layout* fields are reported as ``requires_reinit``; with
  ``reinit`` they are applied by a re-initialisation: new graphs (compiled
  here, the watchdog pinged between graphs) and cold states for every asset
  (ids and sequence numbers kept);
* ``[daemon]`` settings in ``RELOADABLE_SETTINGS`` apply in place, the
  others are reported as ``requires_restart``.

``RELOADING=1`` is sent before anything changes and ``READY=1`` after.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from structlog.typing import FilteringBoundLogger

from predictor.admin.protocol import error, ok
from predictor.config import FIELD_SPECS, PredictorConfig, changed_fields
from predictor.daemon.assets import AssetTable
from predictor.daemon.loading import LiveConfig, LoadedConfig, load_config
from predictor.daemon.model import Model
from predictor.daemon.notify import Notifier
from predictor.daemon.settings import DaemonSettings
from predictor.daemon.snapshotting import Snapshotter
from predictor.daemon.telemetry import CompileCounter
from predictor.errors import ConfigError, PredictorError

#: Daemon settings a reload applies in place (others need a restart).
RELOADABLE_SETTINGS = frozenset(
    {"snapshot_interval_s", "snapshot_keep", "max_drain", "shed", "drain_budget_s"}
)


class Reloader:
    """Applies a re-read config file to the running parts; see the module docstring.

    ``set_shed`` applies a ``shed`` setting (``"auto"`` or a depth);
    ``status_line`` is the ``STATUS=`` text sent with ``READY=1``;
    ``progress`` is called between the graphs of a re-initialisation.
    """

    def __init__(
        self,
        live: LiveConfig,
        model: Model,
        table: AssetTable,
        snapshotter: Snapshotter,
        notifier: Notifier,
        compiles: CompileCounter,
        log: FilteringBoundLogger,
        *,
        set_shed: Callable[[str | int], dict[str, Any]],
        status_line: Callable[[], str],
        progress: Callable[[], None],
    ) -> None:
        self.live = live
        self.model = model
        self.table = table
        self.snapshotter = snapshotter
        self.notifier = notifier
        self.compiles = compiles
        self.log = log
        self.set_shed = set_shed
        self.status_line = status_line
        self.progress = progress

    def reload(self, *, reinit: bool, source: str) -> dict[str, Any]:
        """Re-read the config file and apply it; returns the admin reply."""
        path = self.live.path
        if path is None:
            return error("running on the embedded defaults: there is no config file to reload")
        try:
            new = load_config(path)
        except (ConfigError, OSError) as exc:
            self.log.warning("reload_refused", source=source, reason=str(exc))
            return error(f"invalid config, the running one is kept: {exc}")
        self.notifier.reloading()
        changed = changed_fields(self.live.predictor, new.predictor)
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
                cfg = self.live.predictor.replace(**{k: getattr(new.predictor, k) for k in dynamic})
                self.model.apply_sensitivities(cfg)
                self.live.predictor = cfg
                applied = list(dynamic)
        except (PredictorError, ValueError) as exc:
            self.notifier.ready(self.status_line())
            self.log.error("reload_failed", source=source, reason=str(exc))
            return error(f"reload failed, the running config is kept: {exc}")
        settings_applied, restart = self._settings(new.daemon)
        self.live.loaded = LoadedConfig(self.live.predictor, self.live.settings, path, new.sha256)
        self.notifier.ready(self.status_line())
        fields = {
            "applied": applied + settings_applied,
            "requires_reinit": layout,
            "reinitialised": reinitialised,
            "requires_restart": restart,
        }
        self.log.info("config_reloaded", source=source, **fields)
        return ok(**fields)

    def _settings(self, new: DaemonSettings) -> tuple[list[str], list[str]]:
        old = self.live.settings.model_dump()
        fresh = new.model_dump()
        changed = [k for k in fresh if fresh[k] != old[k]]
        inplace = [k for k in changed if k in RELOADABLE_SETTINGS]
        restart = [f"daemon.{k}" for k in changed if k not in RELOADABLE_SETTINGS]
        if inplace:
            settings = self.live.settings.model_copy(update={k: fresh[k] for k in inplace})
            self.live.settings = settings
            if "snapshot_interval_s" in inplace:
                self.snapshotter.reschedule(settings.snapshot_interval_s)
            if "snapshot_keep" in inplace:
                self.snapshotter.store.keep = settings.snapshot_keep
            if "shed" in inplace:
                self.set_shed(settings.shed)
        return [f"daemon.{k}" for k in inplace], restart

    def _reinit(self, cfg: PredictorConfig) -> None:
        """Layout change: new graphs, cold states for every asset (ids and seq kept)."""
        start = time.perf_counter()
        with self.compiles.expected():
            fp = self.model.replace(cfg)
            self.table.reset_states(fp)
            self.table.warm_gather_scatter()
            self.table.warmup(lambda _done, _total: self.progress())
        self.live.predictor = cfg
        self.log.info(
            "reinitialised",
            duration_s=round(time.perf_counter() - start, 3),
            assets=len(self.table),
        )
