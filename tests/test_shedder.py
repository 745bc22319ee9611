"""Jitter/EWMA load-shedding monitor (predictor.daemon.shedder): depth and refit-interval levers."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import numpy as np
import pytest
from scipy.signal import lfilter

from predictor.config import PredictorConfig
from predictor.daemon.shedder import (
    MAX_REFIT_INTERVAL,
    LevelChange,
    LoadShedder,
    depth_ladder,
    nearest_rank,
    refit_ladder,
)

MS = 1_000_000
BUDGET = 2 * MS
W = 32  # steps per window in these tests


def make(**kw: object) -> LoadShedder:
    args: dict[str, object] = {
        "latency_budget_ns": BUDGET,
        "nyquist_interval_ns": 100 * MS,
        "hysteresis": 0.8,
        "recovery_windows": 10,
        "window": W,
        "ewma_alpha": 0.2,
    }
    args.update(kw)
    # One rung of K unless a test asks for the K lever: the depth-only tests below.
    args.setdefault("refit_intervals", (16,))
    return LoadShedder((5, 3, 2), **args)  # type: ignore[arg-type]


def run(
    shed: LoadShedder, windows: int, latency: Callable[[int, int], float]
) -> list[tuple[int, LevelChange]]:
    """Feed ``windows * window`` steps; ``latency(step, depth)`` in ns. Returns (step, change)."""
    changes = []
    start = shed.observations
    for i in range(start, start + windows * shed.window):
        change = shed.observe(latency(i, shed.depth))
        if change is not None:
            changes.append((i, change))
    return changes


def test_nearest_rank_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 64, 128, 1000):
        x = rng.exponential(size=n)
        for q in (0.5, 0.95, 0.99):
            ref = np.percentile(x, 100 * q, method="inverted_cdf")
            assert nearest_rank(sorted(x.tolist()), q) == ref


def test_ewma_and_jitter_percentiles_against_reference() -> None:
    rng = np.random.default_rng(1)
    x = rng.gamma(4.0, 0.25 * MS, size=5 * W)
    shed = make(latency_budget_ns=1e12)
    for v in x:
        shed.observe(float(v))
    a = 0.2
    # m_t = (1 - a) m_{t-1} + a x_t with m_1 = x_1, as a linear filter.
    m, _ = lfilter([a], [1.0, -(1.0 - a)], x[1:], zi=[(1.0 - a) * x[0]])
    ewma = np.concatenate([[x[0]], m])
    assert shed.ewma_ns == pytest.approx(ewma[-1], rel=1e-12)
    jitter = np.abs(x[1:] - ewma[:-1])[-W:]
    assert shed.jitter_p95_ns == pytest.approx(np.percentile(jitter, 95, method="inverted_cdf"))
    assert shed.jitter_p99_ns == pytest.approx(np.percentile(jitter, 99, method="inverted_cdf"))


def test_ladder_from_config() -> None:
    cfg = PredictorConfig()
    assert depth_ladder(cfg) == (3, 2)
    shed = LoadShedder.from_config(cfg)
    assert (shed.depths, shed.depth, shed.level) == ((3, 2), 3, 0)
    assert shed.latency_budget_ns == cfg.latency_budget_ns
    assert shed.recovery_windows == cfg.shed_recovery_windows
    deep = LoadShedder.from_config(cfg.replace(log_sig_depth=5))
    assert deep.depths == (5, 3, 2)
    assert deep.level_of_depth(2) == 2


def test_model_compiles_only_the_ladder_and_computes_the_same() -> None:
    """The daemon's predictor holds the usable depths only; each depth trains as configured."""
    import structlog

    from predictor.core.step import dgm_steps_for_depth
    from predictor.daemon.model import Model, ladder_config

    log = structlog.get_logger()
    for cfg, ladder in [
        (PredictorConfig(), (3, 2)),
        (PredictorConfig().replace(log_sig_depth=5), (5, 3, 2)),
        (PredictorConfig().replace(log_sig_depth=2), (2,)),
    ]:
        model = Model(cfg, shed="auto", window=W, log=log)
        assert model.depths == ladder == model.shedder.depths
        assert model.fp.config.shed_ladder == ladder and model.cfg == cfg
        trimmed = ladder_config(cfg)
        for depth in ladder:
            assert dgm_steps_for_depth(trimmed, depth) == dgm_steps_for_depth(cfg, depth)
        with pytest.raises(ValueError):
            model.pin(4)
    pinned = Model(PredictorConfig(), shed=2, window=W, log=log)
    assert (pinned.shedder.depth, pinned.shedder.pinned) == (2, 1)
    refused = Model(PredictorConfig(), shed=5, window=W, log=log)  # logged, not pinned
    assert refused.shedder.pinned is None and refused.shedder.depth == 3


COST = {5: 1.0 * MS, 3: 0.6 * MS, 2: 0.4 * MS}  # step latency per depth, no slowdown


def noisy(seed: int, slow: Callable[[int], float]) -> Callable[[int, int], float]:
    rng = random.Random(seed)
    return lambda i, d: COST[d] * slow(i) * (1.0 + 0.05 * (rng.random() - 0.5))


def test_slowdown_steps_down_and_recovers_with_hysteresis() -> None:
    shed = make()
    slow_from, slow_to = 20 * W, 60 * W  # a 4.25x slowdown for 40 windows
    changes = run(shed, 120, noisy(2, lambda i: 4.25 if slow_from <= i < slow_to else 1.0))
    kinds = [(c.old_depth, c.new_depth, c.reason) for _, c in changes]
    # 4.25 ms at depth 5 and 2.55 ms at depth 3 exceed the 2 ms budget; 1.7 ms at depth 2
    # does not, but it is not calm either (above 0.8 * budget) until the slowdown ends.
    assert kinds == [(5, 3, "latency"), (3, 2, "latency"), (2, 3, "recovery"), (3, 5, "recovery")]
    steps = [i for i, _ in changes]
    assert slow_from <= steps[0] < slow_from + 2 * W  # reacts within the window the EWMA crosses
    assert steps[1] - steps[0] >= 2 * W  # one settling window between two switches
    # Recovery needs recovery_windows calm windows after the slowdown ends.
    assert steps[2] >= slow_to + 10 * W - 1
    assert steps[2] <= slow_to + 12 * W
    assert steps[3] - steps[2] >= 11 * W  # settling window + 10 calm windows
    assert (shed.level, shed.steps_down, shed.steps_up, shed.switches) == (0, 2, 2, 4)


def test_latency_inside_the_hysteresis_band_stays_shed() -> None:
    shed = make()
    # 1.8 ms after shedding: under the budget (no further step down), over
    # 0.8 * budget (never calm): the level must stay where it is.
    changes = run(shed, 200, noisy(3, lambda i: 4.0 if i < 10 * W else 1.8 / 0.4))
    assert [(c.new_depth, c.reason) for _, c in changes] == [(3, "latency"), (2, "latency")]
    assert shed.level == 2


def test_no_flapping_on_noise_at_the_budget() -> None:
    shed = make()
    rng = random.Random(4)
    # Depth 5 hovers around the budget (+-10%); the smaller depths sit in the
    # hysteresis band (0.8-1.0 budget): at most one step down, never back up.
    base = {5: 1.0 * BUDGET, 3: 0.9 * BUDGET, 2: 0.85 * BUDGET}
    changes = run(shed, 300, lambda i, d: base[d] * (1.0 + 0.2 * (rng.random() - 0.5)))
    assert shed.steps_up == 0
    assert len(changes) <= 1
    assert [c.new_depth for _, c in changes] in ([], [3])


def test_jitter_alone_steps_down() -> None:
    # EWMA around 1 ms is under the 5 ms budget, but the 0.9 ms jitter exceeds
    # 80% of a 1 ms Nyquist interval.
    shed = make(latency_budget_ns=5 * MS, nyquist_interval_ns=1 * MS)
    changes = run(shed, 3, lambda i, d: (0.1 if i % 2 else 1.9) * MS)
    assert changes and changes[0][1].reason == "jitter"
    assert changes[0][1].jitter_p99_ns > 0.8 * MS


def test_bottom_level_is_a_floor() -> None:
    shed = make()
    changes = run(shed, 50, lambda i, d: 10 * BUDGET)
    assert [c.new_depth for _, c in changes] == [3, 2]
    assert shed.depth == 2


def test_pinning_overrides_and_release_resumes() -> None:
    shed = make()
    change = shed.pin(2)
    assert change is not None and (change.new_depth, change.reason) == (2, "pin")
    assert shed.pin(2) is None  # already there
    assert run(shed, 30, lambda i, d: 0.1 * MS) == []  # calm, but pinned
    shed.pin(0)
    assert run(shed, 30, lambda i, d: 10 * BUDGET) == []  # slow, but pinned
    assert (shed.level, shed.pinned, shed.switches, shed.pinned_switches) == (0, 0, 0, 2)
    assert shed.pin(None) is None
    changes = run(shed, 2, lambda i, d: 10 * BUDGET)  # one decision window + one settling
    assert [c.reason for _, c in changes] == ["latency"]
    with pytest.raises(ValueError, match="outside"):
        shed.pin(3)


def test_deterministic() -> None:
    def trace() -> list[tuple[int, LevelChange]]:
        shed = make()
        return run(shed, 100, noisy(5, lambda i: 3.0 if 10 * W <= i < 40 * W else 1.0))

    assert trace() == trace()


def test_retune_keeps_level_and_refuses_ladder_change() -> None:
    cfg = PredictorConfig(log_sig_depth=5)
    shed = LoadShedder.from_config(cfg, window=W)
    shed.pin(1)
    shed.retune(cfg.replace(inference_recovery_hysteresis=0.5, besov_nyquist_interval_ns=10**7))
    assert (shed.hysteresis, shed.nyquist_interval_ns, shed.level) == (0.5, 1e7, 1)
    with pytest.raises(ValueError, match="re-initialise"):
        shed.retune(cfg.replace(log_sig_depth=3))


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="decreasing"):
        LoadShedder(
            (3, 5),
            refit_intervals=(16,),
            latency_budget_ns=1,
            nyquist_interval_ns=1,
            hysteresis=0.8,
            recovery_windows=1,
        )
    for bad in ((), (0, 16), (32, 16), (16, 16)):
        with pytest.raises(ValueError, match="refit intervals"):
            make(refit_intervals=bad)
    with pytest.raises(ValueError):
        refit_ladder(0)
    with pytest.raises(ValueError, match="ewma_alpha"):
        make(ewma_alpha=0.0)


# --- the refit-interval lever ------------------------------------------------------------


#: Step latency per (depth, K): refits amortised over K ticks make a larger K cheaper.
def cost(depth: int, k: int) -> float:
    return COST[depth] * (0.5 + 8.0 / k)


def test_refit_ladder_doubles_and_caps() -> None:
    assert refit_ladder(16) == (16, 32, 64)
    assert refit_ladder(16, 0) == (16,)
    assert refit_ladder(1, 3) == (1, 2, 4, 8)
    assert refit_ladder(3000, 2) == (3000, MAX_REFIT_INTERVAL)  # capped, merged
    assert refit_ladder(MAX_REFIT_INTERVAL, 2) == (MAX_REFIT_INTERVAL,)
    cfg = PredictorConfig(refit_interval=8)
    shed = LoadShedder.from_config(cfg)
    assert (shed.refit_intervals, shed.refit_interval, shed.refit_level) == ((8, 16, 32), 8, 0)
    assert LoadShedder.from_config(cfg, refit_doublings=0).refit_intervals == (8,)


def test_k_rises_before_the_depth_is_cut_and_the_path_is_retraced() -> None:
    shed = make(refit_intervals=(16, 32, 64))
    slow_to = 60 * W
    changes = run(
        shed, 200, lambda i, d: cost(d, shed.refit_interval) * (7.0 if i < slow_to else 1.0)
    )
    # Under the 7x slowdown: 7, 5.25, 4.4 ms at depth 5 (K 16, 32, 64), 2.6 ms at depth 3,
    # 1.75 ms at depth 2 (in the hysteresis band: it stays there until the slowdown ends).
    path = [(c.new_depth, c.new_refit_interval, c.reason) for _, c in changes]
    assert path == [
        (5, 32, "latency"),
        (5, 64, "latency"),
        (3, 64, "latency"),
        (2, 64, "latency"),
        (3, 64, "recovery"),
        (5, 64, "recovery"),
        (5, 32, "recovery"),
        (5, 16, "recovery"),
    ]
    # Each change records where it came from: consecutive changes chain.
    for (_, a), (_, b) in itertools.pairwise(changes):
        assert (b.old_depth, b.old_refit_interval) == (a.new_depth, a.new_refit_interval)
    assert (shed.level, shed.refit_level, shed.refit_interval) == (0, 0, 16)
    assert (shed.steps_down, shed.steps_up, shed.switches) == (4, 4, 8)
    # One rung per decision: at least a settling window between two switches.
    steps = [i for i, _ in changes]
    assert all(b - a >= 2 * W - 1 for a, b in itertools.pairwise(steps))


def test_k_alone_can_absorb_a_slowdown() -> None:
    # 2.4x: depth 5 costs 2.4 ms at K = 16 (over the 2 ms budget), 1.8 ms at K = 32
    # (inside the hysteresis band): one rung of K, the depth is never cut.
    shed = make(refit_intervals=(16, 32, 64))
    changes = run(shed, 40, lambda i, d: cost(d, shed.refit_interval) * 2.4)
    assert [(c.new_depth, c.new_refit_interval) for _, c in changes] == [(5, 32)]
    assert (shed.depth, shed.refit_interval) == (5, 32)


def test_jitter_raises_k_first() -> None:
    shed = make(refit_intervals=(16, 32, 64), latency_budget_ns=5 * MS, nyquist_interval_ns=1 * MS)
    changes = run(shed, 3, lambda i, d: (0.1 if i % 2 else 1.9) * MS)
    (_, first), *_ = changes
    assert (first.reason, first.old_refit_interval, first.new_refit_interval) == ("jitter", 16, 32)
    assert first.new_depth == first.old_depth == 5


def test_a_pin_fixes_the_depth_at_the_configured_k() -> None:
    shed = make(refit_intervals=(16, 32, 64))
    run(shed, 2, lambda i, d: 10 * BUDGET)
    assert (shed.depth, shed.refit_interval) == (5, 32)
    change = shed.pin(0)
    assert change is not None and change.reason == "pin"
    assert (change.old_depth, change.new_depth) == (5, 5)
    assert (change.old_refit_interval, change.new_refit_interval) == (32, 16)
    assert (shed.level, shed.refit_interval, shed.pinned) == (0, 16, 0)
    assert run(shed, 30, lambda i, d: 10 * BUDGET) == []  # slow, but pinned: K stays
    assert shed.refit_interval == 16
    shed.pin(None)
    changes = run(shed, 2, lambda i, d: 10 * BUDGET)
    assert [(c.new_depth, c.new_refit_interval) for _, c in changes] == [(5, 32)]


def test_retune_rebuilds_the_k_ladder_on_the_same_rung() -> None:
    cfg = PredictorConfig(refit_interval=16)
    shed = LoadShedder.from_config(cfg, window=W)
    run(shed, 2, lambda i, d: 10.0 * cfg.latency_budget_ns)
    assert (shed.refit_level, shed.refit_interval) == (1, 32)
    assert shed.refit_interval_for(cfg.replace(refit_interval=8)) == 16
    assert shed.refit_interval == 32  # a query changes nothing
    shed.retune(cfg.replace(refit_interval=8))
    assert (shed.refit_intervals, shed.refit_level, shed.refit_interval) == ((8, 16, 32), 1, 16)
    shed.retune(cfg.replace(refit_interval=MAX_REFIT_INTERVAL))  # one rung left: clamped
    assert (shed.refit_level, shed.refit_interval) == (0, MAX_REFIT_INTERVAL)


def test_model_puts_the_shed_k_in_force_without_new_graphs() -> None:
    """``Model`` switches K on its graphs' parameters; the configured config is untouched."""
    import structlog

    from predictor.daemon.model import Model

    cfg = PredictorConfig(refit_interval=16)
    model = Model(cfg, shed="auto", window=W, log=structlog.get_logger())
    graphs = model.fp._layout  # the compiled graphs are keyed by the layout
    seen = [model.refit_interval]
    for _ in range(6 * W):
        change = model.observe(10.0 * cfg.latency_budget_ns)
        if change is not None:
            assert model.refit_interval == change.new_refit_interval == model.shedder.refit_interval
            assert model.fp.config.refit_interval == change.new_refit_interval
            seen.append(model.refit_interval)
    assert seen[:3] == [16, 32, 64]
    assert model.cfg.refit_interval == 16  # snapshots record the configuration
    assert model.fp._layout == graphs
    # A reload of another sensitivity keeps the shed K; a new K0 moves the ladder.
    model.apply_sensitivities(cfg.replace(cusum_h=9.0))
    assert (model.refit_interval, model.fp.config.cusum_h) == (64, 9.0)
    model.apply_sensitivities(cfg.replace(refit_interval=8))
    assert (model.refit_interval, model.shedder.refit_intervals) == (32, (8, 16, 32))
    # Pinning a depth restores the configured K on the graphs.
    assert model.pin(model.depths[0]) is not None
    assert model.refit_interval == 8 == model.fp.config.refit_interval
    unshed = Model(cfg, shed="auto", window=W, log=structlog.get_logger(), refit_doublings=0)
    assert unshed.shedder.refit_intervals == (16,)
