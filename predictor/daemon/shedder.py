"""Load shedding: the jitter/EWMA monitor of MODEL.md ("Load shedding").

The daemon feeds the wall time of every jitted step (``time.perf_counter_ns``
around the call, in ns). The monitor keeps

* the EWMA of step latency, ``m_t = m_{t-1} + alpha (l_t - m_{t-1})``
  (``m_1 = l_1``);
* the jitter ``j_t = |l_t - m_{t-1}|`` (deviation from the mean *before* the
  sample), and its P95 / P99 over the last ``window`` steps (nearest-rank
  percentiles: the ``ceil(q n)``-th smallest of n values);

and chooses a *level* of the depth ladder: level 0 runs the configured
``log_sig_depth``, level i the i-th smaller depth of ``shed_ladder``.

Decisions are taken once per window of ``window`` steps, never in between:

* step down one level when ``EWMA > latency_budget_ns`` or
  ``jitter P99 > 0.8 * besov_nyquist_interval_ns``;
* step up one level when the EWMA has stayed below
  ``inference_recovery_hysteresis * latency_budget_ns`` (and neither
  step-down condition held) for ``shed_recovery_windows`` consecutive
  windows.

After any switch the jitter window is cleared and one whole window at the
new level is observed before the next decision, so one slow spell moves one
level, not the whole ladder, and the EWMA lag of the old level does not
count against the new one. The band between the recovery threshold and the
budget is the hysteresis that keeps a latency near the budget from flapping.

``pin(level)`` fixes the level (admin ``shed N`` or config); ``pin(None)``
returns to automatic control from the current level. Pure Python,
deterministic, O(window) memory.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

from predictor.config import PredictorConfig

#: Fraction of the Nyquist interval that jitter P99 may reach.
JITTER_NYQUIST_FRACTION = 0.8


@dataclass(frozen=True)
class LevelChange:
    """One switch of the shedding level (level 0 = full depth)."""

    old_level: int
    new_level: int
    old_depth: int
    new_depth: int
    #: ``latency`` / ``jitter`` (step down), ``recovery`` (step up), ``pin``.
    reason: str
    ewma_ns: float
    jitter_p99_ns: float


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


class LoadShedder:
    """Chooses the signature depth level from observed step latencies.

    ``depths`` is the ladder (strictly decreasing, level 0 first); the
    thresholds are in ns; ``window`` is the number of steps per decision
    window (with the default 128, the nearest-rank P99 is the 127th of 128
    jitters, so one isolated outlier per window does not count); ``ewma_alpha``
    the EWMA rate in (0, 1].
    """

    def __init__(
        self,
        depths: tuple[int, ...],
        *,
        latency_budget_ns: float,
        nyquist_interval_ns: float,
        hysteresis: float,
        recovery_windows: int,
        window: int = 128,
        ewma_alpha: float = 0.1,
    ) -> None:
        if not depths or any(a <= b for a, b in itertools.pairwise(depths)):
            raise ValueError(f"depths must be strictly decreasing and non-empty: {depths}")
        if window < 1 or recovery_windows < 1:
            raise ValueError("window and recovery_windows must be >= 1")
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        if not 0.0 < hysteresis <= 1.0:
            raise ValueError(f"hysteresis must be in (0, 1], got {hysteresis}")
        self.depths = tuple(depths)
        self.latency_budget_ns = float(latency_budget_ns)
        self.nyquist_interval_ns = float(nyquist_interval_ns)
        self.hysteresis = float(hysteresis)
        self.recovery_windows = int(recovery_windows)
        self.window = int(window)
        self.ewma_alpha = float(ewma_alpha)

        self._level = 0
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
        cls, cfg: PredictorConfig, *, window: int = 128, ewma_alpha: float = 0.1
    ) -> LoadShedder:
        """Monitor with the ladder and thresholds of ``cfg``."""
        return cls(
            depth_ladder(cfg),
            latency_budget_ns=cfg.latency_budget_ns,
            nyquist_interval_ns=cfg.besov_nyquist_interval_ns,
            hysteresis=cfg.inference_recovery_hysteresis,
            recovery_windows=cfg.shed_recovery_windows,
            window=window,
            ewma_alpha=ewma_alpha,
        )

    # --- state ---------------------------------------------------------------
    @property
    def level(self) -> int:
        """Current level (0 = full depth)."""
        return self._level

    @property
    def depth(self) -> int:
        """Signature depth of the current level."""
        return self.depths[self._level]

    @property
    def pinned(self) -> int | None:
        """Pinned level, or None under automatic control."""
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
        """Automatic level switches so far (pins not counted)."""
        return self.steps_down + self.steps_up

    def level_of_depth(self, depth: int) -> int:
        """Level index running ``depth`` (``ValueError`` if not on the ladder)."""
        return self.depths.index(depth)

    # --- control -------------------------------------------------------------
    def observe(self, latency_ns: float) -> LevelChange | None:
        """Account one step latency (ns); return the level change it causes, if any."""
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
            if self._level + 1 < len(self.depths):
                self.steps_down += 1
                return self._switch(self._level + 1, "latency" if slow else "jitter")
            return None
        if self._ewma < self.hysteresis * self.latency_budget_ns:
            self._calm += 1
            if self._calm >= self.recovery_windows and self._level > 0:
                self.steps_up += 1
                return self._switch(self._level - 1, "recovery")
        else:
            self._calm = 0
        return None

    def _switch(self, new_level: int, reason: str) -> LevelChange | None:
        old = self._level
        self._calm = 0
        if new_level == old:
            return None
        self._level = new_level
        # Judge the new level on its own window (see the module docstring).
        self._jitter.clear()
        self._in_window = 0
        self._settling = True
        return LevelChange(
            old, new_level, self.depths[old], self.depths[new_level], reason, self._ewma, self._p99
        )

    def pin(self, level: int | None) -> LevelChange | None:
        """Fix the level (``None``: automatic control again); returns the change, if any."""
        if level is None:
            # Automatic control resumes from the pinned level; nothing switches now.
            self._pinned = None
            self._calm = 0
            return None
        if not 0 <= level < len(self.depths):
            raise ValueError(f"level {level} outside [0, {len(self.depths) - 1}]")
        self._pinned = level
        change = self._switch(level, "pin")
        if change is not None:
            self.pinned_switches += 1
        return change

    def retune(self, cfg: PredictorConfig) -> None:
        """Apply reloaded thresholds of ``cfg``, keeping level and statistics.

        Raises ``ValueError`` if the depth ladder differs (the compiled graphs
        would not match: that change needs a re-initialisation).
        """
        depths = depth_ladder(cfg)
        if depths != self.depths:
            raise ValueError(f"depth ladder changed {self.depths} -> {depths}: re-initialise")
        self.latency_budget_ns = float(cfg.latency_budget_ns)
        self.nyquist_interval_ns = float(cfg.besov_nyquist_interval_ns)
        self.hysteresis = float(cfg.inference_recovery_hysteresis)
        self.recovery_windows = int(cfg.shed_recovery_windows)
