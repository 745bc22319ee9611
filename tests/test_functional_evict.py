"""``functional.evict_compiled``: a layout's memoised graphs are released, others kept.

Most checks build graphs without compiling them (``jax.jit`` is lazy); one
compiles the scan of the cheap ``bench.tuning`` layout over 299 ticks, the
graph ``test_tuning_walkforward`` compiles too (shared through the
persistent XLA cache).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from bench.tuning import cheap_base, switching_series
from predictor.config import PredictorConfig
from predictor.core import functional
from predictor.core.functional import (
    FunctionalPredictor,
    compiled_layouts,
    evict_compiled,
    layout_config,
)
from predictor.tuning.walkforward import TrialInterrupted, WalkForward, WalkForwardSpec

# Layouts no other test uses, so evicting them disturbs nobody's graphs.
LAYOUT_A = cheap_base().replace(wiener_order=3)
LAYOUT_B = cheap_base().replace(wiener_order=5)
SPEC = WalkForwardSpec(folds=2, train_window=100, horizon=100, metric="mase", mode="anchored")


KINDS = ("tick", "refit", "tick_batch", "refit_batch")


def graphs_of(cfg: PredictorConfig) -> dict[tuple[int, str], object]:
    """Every step graph of ``cfg``'s layout (per depth and kind), none compiled."""
    layout = layout_config(cfg)
    return {(d, k): functional._compiled(layout, d, k) for d in cfg.shed_ladder for k in KINDS}


def scan_of(cfg: PredictorConfig) -> object:
    return functional._compiled(layout_config(cfg), cfg.log_sig_depth, "scan")


def build_all(cfg: PredictorConfig) -> dict[tuple[int, str], object]:
    """An instance's step graphs plus the scan graph, none compiled."""
    FunctionalPredictor(cfg, warmup=False)
    scan_of(cfg)
    return graphs_of(cfg)


def test_eviction_drops_that_layout_only() -> None:
    graphs_a, graphs_b = build_all(LAYOUT_A), build_all(LAYOUT_B)
    before = compiled_layouts()
    assert {layout_config(LAYOUT_A), layout_config(LAYOUT_B)} <= before
    scan_b = scan_of(LAYOUT_B)

    # Any config of the layout names it: sensitivities do not matter.
    released = evict_compiled(LAYOUT_A.replace(cusum_h=3.0, epsilon=0.5))
    assert released == len(graphs_a) + 1  # every step graph, and the scan
    assert compiled_layouts() == before - {layout_config(LAYOUT_A)}
    assert evict_compiled(LAYOUT_A) == 0  # nothing left to release

    # The other layout's graphs are the very objects it had: not rebuilt.
    assert graphs_of(LAYOUT_B) == graphs_b
    assert all(graphs_of(LAYOUT_B)[k] is g for k, g in graphs_b.items())
    assert scan_of(LAYOUT_B) is scan_b
    # The evicted layout gets fresh graphs on its next use.
    key = (LAYOUT_A.shed_ladder[0], "tick")
    assert graphs_of(LAYOUT_A)[key] is not graphs_a[key]
    evict_compiled(LAYOUT_A)
    evict_compiled(LAYOUT_B)
    assert compiled_layouts() == before - {layout_config(LAYOUT_A), layout_config(LAYOUT_B)}


def test_evicting_everything_empties_every_cache() -> None:
    build_all(LAYOUT_A)
    assert evict_compiled() >= 3
    assert compiled_layouts() == frozenset()
    assert len(functional._compiled) == 0


def test_evicted_graph_is_freed_and_instances_keep_working() -> None:
    cfg = cheap_base()
    ys = switching_series(np.random.default_rng(5), 300)[:-1]
    fp = FunctionalPredictor(cfg, warmup=False)
    _, first = fp.scan(fp.init_state(), ys)
    graph = weakref.ref(scan_of(cfg))
    assert graph() is not None
    evict_compiled(cfg)
    gc.collect()
    assert graph() is None  # nothing else held the executable: it is released
    _, again = fp.scan(fp.init_state(), ys)  # rebuilt on demand
    np.testing.assert_array_equal(np.asarray(again.predicted_value), first.predicted_value)


@pytest.fixture
def walk() -> WalkForward:
    return WalkForward(switching_series(np.random.default_rng(9), 300), SPEC, LAYOUT_A)


def naive(walk: WalkForward) -> list[np.ndarray]:
    """Last-value forecasts of each fold (no compilation)."""
    return [walk.series[f.target_start - 1 : f.target_end - 1] for f in walk.folds]


def test_deep_trial_releases_its_layout_and_keeps_the_base(
    walk: WalkForward, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_scan = scan_of(walk.base)
    built: list[bool] = []

    def forecasts(cfg: PredictorConfig) -> list[np.ndarray]:
        build_all(cfg)  # what a real evaluation builds, without compiling it
        built.append(layout_config(cfg) in compiled_layouts())
        return naive(walk)

    monkeypatch.setattr(walk, "forecasts", forecasts)
    deep = walk.base.replace(wiener_order=6)
    walk.evaluate(deep)
    assert built == [True]
    assert layout_config(deep) not in compiled_layouts()
    assert scan_of(walk.base) is base_scan  # still in use

    walk.evaluate(walk.base.replace(epsilon=0.5))  # a sensitivity trial: same layout, kept
    assert layout_config(walk.base) in compiled_layouts()
    assert scan_of(walk.base) is base_scan
    evict_compiled(walk.base)


def test_interrupted_deep_trial_is_released_too(
    walk: WalkForward, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forecasts(cfg: PredictorConfig) -> list[np.ndarray]:
        build_all(cfg)
        raise TrialInterrupted("stop requested between folds")

    monkeypatch.setattr(walk, "forecasts", forecasts)
    deep = walk.base.replace(wiener_order=7)
    with pytest.raises(TrialInterrupted):
        walk.evaluate(deep)
    assert layout_config(deep) not in compiled_layouts()
