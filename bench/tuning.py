"""Tuning benchmark: TPE against random search at the same trial budget.

Series: ``switching_series`` — every ``segment`` ticks (40) the regime
flips between a drifting random walk (slope 0.8 per tick, noise sd 0.2) and
a flat stretch carrying a period-10 oscillation of amplitude 3 (plus the
same noise). The best kernel changes every 40 ticks, faster than the
default 50-tick memory of the ensemble's losses (``entropy_window``) and
than its default grace period suits: the default sensitivities are poor.

Objective: walk-forward MASE (``predictor.tuning.walkforward``, anchored
mode, 4 folds of 200 one-step forecasts after 200 training points) of the
fast tier, on a cheap base config (64-point buffer, 4 WTMM scales,
finite-difference kernel B). Both samplers run through
``BayesianMetaOptimizer`` with the same per-trial seeds, so their first 10
(startup) trials coincide and the comparison isolates TPE's model.
Printed: the default's MASE, then per sampler the best MASE after 10, 20
and the full budget (median over seeds, and each seed), and the mean cost
of one evaluation.

    .venv/bin/python -m bench.tuning [--quick]

Without ``--quick`` it also times one walk-forward evaluation of a
5,000-point series with the default config (rolling and anchored).
``--quick``: 20 trials instead of 40, 3 seeds instead of 5, no 5,000-point timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import optuna
from numpy.typing import NDArray

import predictor.core  # noqa: F401  (float64)
from predictor.config import PredictorConfig
from predictor.tuning.optimizer import BayesianMetaOptimizer
from predictor.tuning.space import fast_space
from predictor.tuning.walkforward import WalkForward, WalkForwardSpec

SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = SEEDS[:3]
SEGMENT = 40
N_POINTS = 1000

#: Cheap layout shared with the tuning tests: one evaluation of 1,000 points
#: costs a few tenths of a second on a laptop core.
CHEAP_BASE = dict(
    wtmm_buffer_size=64,
    wtmm_num_scales=4,
    dgm_solver="fd",
    fd_grid_size=17,
    levy_substeps=1,
    signature_window=8,
    wiener_order=4,
    shed_ladder=(3,),
)


def cheap_base() -> PredictorConfig:
    """Default sensitivities on a layout that is cheap to evaluate."""
    return PredictorConfig().replace(**CHEAP_BASE)


def switching_series(
    rng: np.random.Generator, n: int = N_POINTS, segment: int = SEGMENT
) -> NDArray[np.float64]:
    """Alternating drift and oscillation regimes every ``segment`` ticks (see module doc)."""
    t = np.arange(n)
    drifting = (t // segment) % 2 == 0
    level = np.cumsum(np.where(drifting, 0.8, 0.0) + 0.2 * rng.standard_normal(n))
    return level + np.where(drifting, 0.0, 3.0 * np.sin(2.0 * np.pi * t / 10.0))


def walk_forward(series: NDArray[np.float64]) -> WalkForward:
    """The benchmark's objective on ``series``."""
    spec = WalkForwardSpec(folds=4, train_window=200, horizon=200, metric="mase", mode="anchored")
    return WalkForward(series, spec, cheap_base())


def best_after(opt: BayesianMetaOptimizer, k: int) -> float:
    """Best complete value among the first ``k`` trials."""
    values = [t.value for t in opt.trials[:k] if t.value is not None]
    return min(values) if values else float("inf")


def run(trials: int, seeds: tuple[int, ...] = SEEDS) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    walk = walk_forward(switching_series(np.random.default_rng(20240611)))
    t0 = time.perf_counter()
    default = walk.evaluate(walk.base).value
    print(f"first evaluation (compile included): {time.perf_counter() - t0:.1f} s")
    checkpoints = sorted({10, 20, trials} & set(range(1, trials + 1)))
    results: dict[str, dict[int, list[float]]] = {}
    eval_s: list[float] = []
    cpu0 = time.process_time()
    for sampler in ("tpe", "random"):
        results[sampler] = {k: [] for k in checkpoints}
        for seed in seeds:
            opt = BayesianMetaOptimizer(
                fast_space(), walk, f"bench-{sampler}", trials, seed=seed, sampler=sampler
            )
            opt.optimize(checkpoint_interval=trials, early_stopping_patience=trials)
            eval_s += [t.duration_s for t in opt.trials]
            for k in checkpoints:
                results[sampler][k].append(best_after(opt, k))
    print(
        f"\nswitching series: n={N_POINTS}, regime every {SEGMENT} ticks; fast tier; "
        f"walk-forward MASE (anchored, 4 x 200); seeds {list(seeds)}"
    )
    print(f"default sensitivities: MASE {default:.4f}")
    cpu = (time.process_time() - cpu0) / len(eval_s)
    print(
        f"one evaluation ({N_POINTS - 1} ticks): {statistics.mean(eval_s):.2f} s wall, "
        f"{cpu:.2f} s CPU, mean over {len(eval_s)}\n"
    )
    header = f"{'sampler':<8} {'trials':>6} {'median':>8} {'vs default':>10}   per seed"
    print(header)
    print("-" * (len(header) + 30))
    for sampler, by_k in results.items():
        for k, values in by_k.items():
            med = statistics.median(values)
            per_seed = " ".join(f"{v:.4f}" for v in values)
            print(
                f"{sampler:<8} {k:>6} {med:>8.4f} {100 * (med / default - 1):>+9.1f}%   {per_seed}"
            )


def time_default_layout(n: int = 5000) -> None:
    """Cost of one walk-forward evaluation of ``n`` points with the default config."""
    ys = switching_series(np.random.default_rng(9), n)
    cfg = PredictorConfig()
    print(f"\none evaluation of {n} points, default config (buffer 128, DGM kernel B):")
    for spec in (
        WalkForwardSpec(metric="mase"),
        WalkForwardSpec(metric="mase", mode="anchored"),
    ):
        walk = WalkForward(ys, spec, cfg)
        ticks = sum(f.target_end - 1 - f.train_start for f in walk.folds)
        if spec.mode == "anchored":
            ticks = n - 1
        t0 = time.perf_counter()
        walk.evaluate(cfg)
        t1, c1 = time.perf_counter(), time.process_time()
        walk.evaluate(cfg.replace(cusum_h=5.0, entropy_window=10))
        t2, c2 = time.perf_counter(), time.process_time()
        print(
            f"  {spec.mode:<8} {spec.folds} folds x {spec.horizon} after {spec.train_window}: "
            f"{ticks} ticks scanned; first {t1 - t0:.1f} s (compile included), "
            f"next trial {t2 - t1:.1f} s wall, {c2 - c1:.1f} s CPU "
            f"({1e3 * (c2 - c1) / ticks:.2f} ms CPU per tick)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 trials, 3 seeds")
    args = parser.parse_args()
    if args.quick:
        run(20, QUICK_SEEDS)
    else:
        run(40)
        time_default_layout()


if __name__ == "__main__":
    main()
