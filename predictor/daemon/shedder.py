"""Load shedding: the jitter/EWMA monitor of docs/model.md ("Load shedding").

The daemon feeds the wall time of every jitted step (``time.perf_counter_ns``
around the call, in ns). The monitor keeps

* the EWMA of step latency, ``m_t = m_{t-1} + alpha (l_t - m_{t-1})``
  (``m_1 = l_1``);
* the jitter ``j_t = |l_t - m_{t-1}|`` (deviation from the mean *before* the
  sample), and its P95 / P99 over the last ``window`` steps (nearest-rank
  percentiles: the ``ceil(q n)``-th smallest of n values);

and moves along two levers, each a ladder whose rung 0 is the configuration:

* the **refit interval** K (``refit_intervals``): the configured
  ``refit_interval`` K0, then ``2 K0``, ``4 K0``, ... (``refit_doublings``
  doublings, capped at the config's largest K). The cached fits (Hölder
  exponent, Burg/AIC, kernel B's training, the Lévy fit) are recomputed
  every K ticks instead of every K0, so each round carries about 1/K of the
  refits. The switch reaches the graphs as a traced parameter
  (``FunctionalPredictor.set_refit_interval``): nothing recompiles;
* the **signature depth** (``depths``, the *level*): level 0 runs the
  configured ``log_sig_depth``, level i the i-th smaller depth of
  ``shed_ladder`` (a graph per depth, all compiled at warm-up).

Order of the moves, cheapest accuracy first. Over the synthetic processes
of the accuracy benchmark, refitting every 16 ticks costs +0.14% of ensemble
loss against a refit every tick, every 32 ticks +0.35%, every 64 ticks
+0.42%: raising K from 16 to 64 costs about 0.3% of loss, less than one
step down the signature depth (which changes kernel D's features and the
DGM training budget). So a step *down* raises K first (16 -> 32 -> 64) and
cuts the depth only once K is at the top of its ladder (on regime
processes K = 64 costs more, +2.25%, but a CUSUM alarm or entering
Emergency refits at once whatever K is); a step *up* retraces
the path: the depth comes back first, then K comes down to the configured
value. From the configured point (level 0, K0) the path is::

    (d0, K0) -> (d0, 2 K0) -> (d0, 4 K0) -> (d1, 4 K0) -> (d2, 4 K0) ...

Decisions are taken once per window of ``window`` steps, never in between:

* step down one rung when ``EWMA > latency_budget_ns`` or
  ``jitter P99 > 0.8 * besov_nyquist_interval_ns``;
* step up one rung when the EWMA has stayed below
  ``inference_recovery_hysteresis * latency_budget_ns`` (and neither
  step-down condition held) for ``shed_recovery_windows`` consecutive
  windows.

After any switch the jitter window is cleared and one whole window at the
new rung is observed before the next decision, so one slow spell moves one
rung, not the whole ladder, and the EWMA lag of the old rung does not count
against the new one. The band between the recovery threshold and the
budget is the hysteresis that keeps a latency near the budget from flapping.

``pin(level)`` fixes the depth level *and* the configured K (admin ``shed N``
or config): a pinned daemon computes exactly what the configuration says,
reproducibly; ``pin(None)`` returns to automatic control from there. Pure
Python, deterministic, O(window) memory.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from predictor.config import FIELD_SPECS, PredictorConfig

#: Fraction of the Nyquist interval that jitter P99 may reach.
JITTER_NYQUIST_FRACTION = 0.8
#: Doublings of the refit interval the shedder may apply (K0 -> 2 K0 -> 4 K0).
DEFAULT_REFIT_DOUBLINGS = 2
#: Largest refit interval the configuration accepts (the top of any K ladder).
MAX_REFIT_INTERVAL = int(FIELD_SPECS["refit_interval"].hi or 1)


@dataclass(frozen=True)
class LevelChange:
    """One switch of the shedding state (depth level 0 = full depth; K = refit interval)."""

    old_level: int
    new_level: int
    old_depth: int
    new_depth: int
    #: ``latency`` / ``jitter`` (step down), ``recovery`` (step up), ``pin``.
    reason: str
    ewma_ns: float
    jitter_p99_ns: float
    old_refit_interval: int
    new_refit_interval: int


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list: its ``ceil(q n)``-th value (NaN if empty)."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q * n))
    return sorted_values[rank - 1]


def depth_ladder(cfg: PredictorConfig) -> tuple[int, ...]:
    """Depths of the levels: ``log_sig_depth`` and the smaller depths of ``shed_ladder``."""
    return tuple(d for d in cfg.shed_ladder if d <= cfg.log_sig_depth)


def refit_ladder(configured: int, doublings: int = DEFAULT_REFIT_DOUBLINGS) -> tuple[int, ...]:
    """Refit intervals of the K lever: ``configured * 2**j`` for j = 0..doublings, capped.

    The cap is the config's largest ``refit_interval``; rungs that the cap
    makes equal are merged, so the ladder is strictly increasing.
    """
    if configured < 1 or doublings < 0:
        raise ValueError(f"refit interval {configured} / doublings {doublings} out of range")
    ladder: list[int] = []
    for j in range(doublings + 1):
        k = min(configured << j, max(MAX_REFIT_INTERVAL, configured))
        if not ladder or k > ladder[-1]:
            ladder.append(k)
    return tuple(ladder)


class LoadShedder:
    """Chooses the signature depth level and the refit interval from step latencies.

    ``depths`` is the depth ladder (strictly decreasing, level 0 first);
    ``refit_intervals`` the K ladder (strictly increasing, the configured K
    first; one rung turns that lever off); the thresholds are in ns;
    ``window`` is the number of steps per decision window (with the default
    128, the nearest-rank P99 is the 127th of 128 jitters, so one isolated
    outlier per window does not count); ``ewma_alpha`` the EWMA rate in (0, 1].
    """

    def __init__(
        self,
        depths: tuple[int, ...],
        *,
        refit_intervals: Sequence[int],
        latency_budget_ns: float,
        nyquist_interval_ns: float,
        hysteresis: float,
        recovery_windows: int,
        window: int = 128,
        ewma_alpha: float = 0.1,
    ) -> None:
        if not depths or any(a <= b for a, b in itertools.pairwise(depths)):
            raise ValueError(f"depths must be strictly decreasing and non-empty: {depths}")
        _check_refit_ladder(refit_intervals)
        if window < 1 or recovery_windows < 1:
            raise ValueError("window and recovery_windows must be >= 1")
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        if not 0.0 < hysteresis <= 1.0:
            raise ValueError(f"hysteresis must be in (0, 1], got {hysteresis}")
        self.depths = tuple(depths)
        self.refit_intervals = tuple(int(k) for k in refit_intervals)
        self.latency_budget_ns = float(latency_budget_ns)
        self.nyquist_interval_ns = float(nyquist_interval_ns)
        self.hysteresis = float(hysteresis)
        self.recovery_windows = int(recovery_windows)
        self.window = int(window)
        self.ewma_alpha = float(ewma_alpha)
        #: Doublings of K the shedder may apply (``refit_ladder``), kept for ``retune``.
        self.refit_doublings = len(self.refit_intervals) - 1

        self._level = 0
        self._refit_level = 0
        self._pinned: int | None = None
        self._ewma = math.nan
        self._jitter: deque[float] = deque(maxlen=self.window)
        self._in_window = 0
        self._settling = False
        self._calm = 0
        self._p95 = math.nan
        self._p99 = math.nan
        self.observations = 0
        self.steps_down = 0
        self.steps_up = 0
        self.pinned_switches = 0

    @classmethod
    def from_config(
        cls,
        cfg: PredictorConfig,
        *,
        window: int = 128,
        ewma_alpha: float = 0.1,
        refit_doublings: int = DEFAULT_REFIT_DOUBLINGS,
    ) -> LoadShedder:
        """Monitor with the ladders and thresholds of ``cfg``."""
        shedder = cls(
            depth_ladder(cfg),
            refit_intervals=refit_ladder(cfg.refit_interval, refit_doublings),
            latency_budget_ns=cfg.latency_budget_ns,
            nyquist_interval_ns=cfg.besov_nyquist_interval_ns,
            hysteresis=cfg.inference_recovery_hysteresis,
            recovery_windows=cfg.shed_recovery_windows,
            window=window,
            ewma_alpha=ewma_alpha,
        )
        # A cap can merge rungs; retune must rebuild with the requested count.
        shedder.refit_doublings = refit_doublings
        return shedder

    # --- state ---------------------------------------------------------------
    @property
    def level(self) -> int:
        """Current depth level (0 = full depth)."""
        return self._level

    @property
    def depth(self) -> int:
        """Signature depth of the current level."""
        return self.depths[self._level]

    @property
    def refit_level(self) -> int:
        """Current rung of the K ladder (0 = the configured refit interval)."""
        return self._refit_level

    @property
    def refit_interval(self) -> int:
        """Refit interval K in force (ticks between refits of the cached fits)."""
        return self.refit_intervals[self._refit_level]

    @property
    def pinned(self) -> int | None:
        """Pinned depth level, or None under automatic control."""
        return self._pinned

    @property
    def ewma_ns(self) -> float:
        """EWMA of step latency in ns (NaN before the first observation)."""
        return self._ewma

    @property
    def jitter_p95_ns(self) -> float:
        """Jitter P95 in ns at the last window end (NaN before the first)."""
        return self._p95

    @property
    def jitter_p99_ns(self) -> float:
        """Jitter P99 in ns at the last window end (NaN before the first)."""
        return self._p99

    @property
    def switches(self) -> int:
        """Automatic switches so far, of either lever (pins not counted)."""
        return self.steps_down + self.steps_up

    def level_of_depth(self, depth: int) -> int:
        """Level index running ``depth`` (``ValueError`` if not on the ladder)."""
        return self.depths.index(depth)

    # --- control -------------------------------------------------------------
    def observe(self, latency_ns: float) -> LevelChange | None:
        """Account one step latency (ns); return the change it causes, if any."""
        x = float(latency_ns)
        self.observations += 1
        if math.isnan(self._ewma):
            self._ewma = x
            jitter = 0.0
        else:
            jitter = abs(x - self._ewma)
            self._ewma += self.ewma_alpha * (x - self._ewma)
        self._jitter.append(jitter)
        self._in_window += 1
        if self._in_window < self.window:
            return None
        self._in_window = 0
        ordered = sorted(self._jitter)
        self._p95 = nearest_rank(ordered, 0.95)
        self._p99 = nearest_rank(ordered, 0.99)
        if self._settling:
            self._settling = False
            return None
        if self._pinned is not None:
            return None
        return self._decide()

    def _decide(self) -> LevelChange | None:
        slow = self._ewma > self.latency_budget_ns
        jittery = self._p99 > JITTER_NYQUIST_FRACTION * self.nyquist_interval_ns
        if slow or jittery:
            self._calm = 0
            reason = "latency" if slow else "jitter"
            # Cheapest first: raise K, then cut the depth (module docstring).
            if self._refit_level + 1 < len(self.refit_intervals):
                self.steps_down += 1
                return self._switch(self._level, self._refit_level + 1, reason)
            if self._level + 1 < len(self.depths):
                self.steps_down += 1
                return self._switch(self._level + 1, self._refit_level, reason)
            return None
        if self._ewma < self.hysteresis * self.latency_budget_ns:
            self._calm += 1
            if self._calm >= self.recovery_windows:
                # Retrace: the depth comes back first, then K.
                if self._level > 0:
                    self.steps_up += 1
                    return self._switch(self._level - 1, self._refit_level, "recovery")
                if self._refit_level > 0:
                    self.steps_up += 1
                    return self._switch(self._level, self._refit_level - 1, "recovery")
        else:
            self._calm = 0
        return None

    def _switch(self, new_level: int, new_refit: int, reason: str) -> LevelChange | None:
        old, old_refit = self._level, self._refit_level
        self._calm = 0
        if (new_level, new_refit) == (old, old_refit):
            return None
        self._level, self._refit_level = new_level, new_refit
        # Judge the new rung on its own window (see the module docstring).
        self._jitter.clear()
        self._in_window = 0
        self._settling = True
        return LevelChange(
            old,
            new_level,
            self.depths[old],
            self.depths[new_level],
            reason,
            self._ewma,
            self._p99,
            self.refit_intervals[old_refit],
            self.refit_intervals[new_refit],
        )

    def pin(self, level: int | None) -> LevelChange | None:
        """Fix the depth level at the configured K (``None``: automatic control again).

        Returns the change, if any.
        """
        if level is None:
            # Automatic control resumes from the pinned point; nothing switches now.
            self._pinned = None
            self._calm = 0
            return None
        if not 0 <= level < len(self.depths):
            raise ValueError(f"level {level} outside [0, {len(self.depths) - 1}]")
        self._pinned = level
        change = self._switch(level, 0, "pin")
        if change is not None:
            self.pinned_switches += 1
        return change

    def retune(self, cfg: PredictorConfig) -> None:
        """Apply reloaded thresholds and refit interval of ``cfg``, keeping levels and statistics.

        The K ladder is rebuilt on ``cfg.refit_interval`` and the shedder
        stays on the same rung (the top one if the new ladder is shorter).
        Raises ``ValueError`` if the depth ladder differs (the compiled graphs
        would not match: that change needs a re-initialisation).
        """
        depths = depth_ladder(cfg)
        if depths != self.depths:
            raise ValueError(f"depth ladder changed {self.depths} -> {depths}: re-initialise")
        ladder = refit_ladder(cfg.refit_interval, self.refit_doublings)
        self.refit_intervals = ladder
        self._refit_level = min(self._refit_level, len(ladder) - 1)
        self.latency_budget_ns = float(cfg.latency_budget_ns)
        self.nyquist_interval_ns = float(cfg.besov_nyquist_interval_ns)
        self.hysteresis = float(cfg.inference_recovery_hysteresis)
        self.recovery_windows = int(cfg.shed_recovery_windows)

    def refit_interval_for(self, cfg: PredictorConfig) -> int:
        """The K that ``retune(cfg)`` would put in force (nothing changes here)."""
        ladder = refit_ladder(cfg.refit_interval, self.refit_doublings)
        return ladder[min(self._refit_level, len(ladder) - 1)]


def _check_refit_ladder(ladder: Sequence[int]) -> None:
    if not ladder or ladder[0] < 1 or any(a >= b for a, b in itertools.pairwise(ladder)):
        raise ValueError(f"refit intervals must be strictly increasing, >= 1: {tuple(ladder)}")
