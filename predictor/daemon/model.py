"""The daemon's model: the config in force, its step graphs and its load shedder.

The shedder has two levers (``shedder``): the signature depth, read by the
pipeline at every round, and the refit interval K, which this class puts in
force on the graphs (``FunctionalPredictor.set_refit_interval``: a traced
parameter, nothing recompiles) whenever the shedder moves it: every change
goes through ``observe``, ``pin`` or ``apply_sensitivities``.

The shedder's depth ladder (``shedder.depth_ladder``) is the configured
``log_sig_depth`` and the smaller depths of ``shed_ladder``; a depth above
``log_sig_depth`` can never be chosen, so the ``FunctionalPredictor`` is
built on ``ladder_config(cfg)``, whose ``shed_ladder`` is that ladder, and
no graph of an unusable depth is ever compiled. The DGM training steps of a
depth depend only on its rank below ``log_sig_depth``
(``core.step.dgm_steps_for_depth``), so the trimmed ladder computes exactly
what the configured one would.

``cfg`` stays the configuration as written (snapshots record it).
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor
from predictor.daemon.shedder import (
    DEFAULT_REFIT_DOUBLINGS,
    LevelChange,
    LoadShedder,
    depth_ladder,
)


def ladder_config(cfg: PredictorConfig) -> PredictorConfig:
    """``cfg`` with ``shed_ladder`` cut to the depths the shedder can use."""
    ladder = depth_ladder(cfg)
    return cfg if ladder == cfg.shed_ladder else cfg.replace(shed_ladder=ladder)


def make_shedder(
    cfg: PredictorConfig,
    shed: str | int,
    *,
    window: int,
    log: FilteringBoundLogger,
    refit_doublings: int = DEFAULT_REFIT_DOUBLINGS,
) -> LoadShedder:
    """A shedder on ``cfg``'s ladders; ``shed`` is ``"auto"`` or a depth to pin."""
    shedder = LoadShedder.from_config(cfg, window=window, refit_doublings=refit_doublings)
    if shed != "auto":
        try:
            shedder.pin(shedder.level_of_depth(int(shed)))
        except ValueError:
            log.warning("shed_pin_invalid", depth=shed, ladder=list(shedder.depths))
    return shedder


class Model:
    """``cfg`` (as configured), ``fp`` (its ladder's graphs) and ``shedder``.

    ``apply_sensitivities`` swaps in reloadable fields; ``replace`` installs
    a new layout (a re-initialisation), keeping the shedder's pin.
    ``refit_doublings`` is how far the shedder may raise K (0: never).
    """

    def __init__(
        self,
        cfg: PredictorConfig,
        *,
        shed: str | int,
        window: int,
        log: FilteringBoundLogger,
        refit_doublings: int = DEFAULT_REFIT_DOUBLINGS,
    ) -> None:
        self.cfg = cfg
        self.window = window
        self.log = log
        self.refit_doublings = refit_doublings
        self.fp = FunctionalPredictor(ladder_config(cfg), warmup=False)
        self.shedder = make_shedder(
            cfg, shed, window=window, log=log, refit_doublings=refit_doublings
        )

    @property
    def depths(self) -> tuple[int, ...]:
        """The ladder: the depths that are compiled, deepest first."""
        return self.fp.depths

    @property
    def refit_interval(self) -> int:
        """K in force on the graphs (the shedder's rung of the configured K's ladder)."""
        return int(self.fp.config.refit_interval)

    def apply_sensitivities(self, cfg: PredictorConfig) -> None:
        """Adopt ``cfg``, which differs from ``self.cfg`` in dynamic fields only.

        A shed K stays shed: the graphs get the shedder's rung of the new
        ``refit_interval``'s ladder, not the configured value itself.
        """
        k = self.shedder.refit_interval_for(cfg)
        self.fp.set_sensitivities(ladder_config(cfg).replace(refit_interval=k))
        self.shedder.retune(cfg)
        self.cfg = cfg

    def observe(self, latency_ns: float) -> LevelChange | None:
        """Feed the shedder one step latency; put a new K in force at once."""
        return self._enforce(self.shedder.observe(latency_ns))

    def replace(self, cfg: PredictorConfig) -> FunctionalPredictor:
        """A new layout: new graphs (not compiled yet) and a new shedder; returns the new fp."""
        pinned = self.shedder.pinned
        shed: str | int = "auto" if pinned is None else self.shedder.depths[pinned]
        self.fp = FunctionalPredictor(ladder_config(cfg), warmup=False)
        self.shedder = make_shedder(
            cfg, shed, window=self.window, log=self.log, refit_doublings=self.refit_doublings
        )
        self.cfg = cfg
        return self.fp

    def pin(self, depth: int | None) -> LevelChange | None:
        """Pin the shedder at ``depth`` and the configured K (None: automatic).

        ``ValueError`` off the ladder.
        """
        if depth is None:
            return self.shedder.pin(None)
        return self._enforce(self.shedder.pin(self.shedder.level_of_depth(depth)))

    def _enforce(self, change: LevelChange | None) -> LevelChange | None:
        if change is not None and change.new_refit_interval != self.refit_interval:
            self.fp.set_refit_interval(change.new_refit_interval)
        return change
