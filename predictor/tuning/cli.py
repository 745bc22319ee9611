"""``predictorctl tune``: walk-forward Bayesian tuning of a series from the command line.

    predictorctl tune --series FILE.csv --tier fast|deep --trials N --study NAME
                      [--resume] [--checkpoint PATH] [--export config.toml] [--seed S]

The current parameters come from ``--config`` (default: the ``--export``
file, else the built-in defaults; environment overrides are not applied:
the file is what gets compared and mutated). A new study evaluates them
first (trial 0), so the final table compares like with like. Progress: one
line per trial (a bar redrawn in place on a terminal; JSON lines with
``--json``): trial n/N, the trial's score, best so far, ETA.

Checkpoint (default ``<study>.study.json``) every ``--checkpoint-interval``
trials, on each new best, on SIGUSR1, and on SIGTERM/SIGINT, after which
the command exits 128 + signal number; ``--resume`` continues from it
(an existing checkpoint is never overwritten without ``--resume``).
Exit status: 0 done, 1 export refused, 2 usage or input error,
130/143 interrupted (checkpoint written).

This module keeps its imports light (the parser is built on every
``predictorctl`` call); JAX and Optuna are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from predictor.tuning.optimizer import BayesianMetaOptimizer, TrialRecord
    from predictor.tuning.result import Mutation

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
DEFAULT_TRIALS = {"fast": 50, "deep": 500}


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def configure_parser(p: argparse.ArgumentParser, positive_int: Callable[[str], int]) -> None:
    """Add the ``tune`` options to its subparser."""
    p.add_argument("--series", required=True, metavar="FILE.csv", help="series to tune on")
    p.add_argument("--column", default="y", metavar="NAME", help="CSV value column (default y)")
    p.add_argument("--tier", choices=("fast", "deep"), default="fast", help="default fast")
    p.add_argument(
        "--trials",
        type=positive_int,
        metavar="N",
        help="total trial budget, resumed trials included (default 50 fast, 500 deep)",
    )
    p.add_argument("--study", required=True, metavar="NAME", help="study name")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument(
        "--checkpoint", metavar="PATH", help="checkpoint file (default <study>.study.json)"
    )
    p.add_argument(
        "--export",
        metavar="CONFIG",
        help="merge the best parameters into this config.toml (mutation protocol)",
    )
    p.add_argument(
        "--config",
        metavar="CONFIG",
        help="current config (default: the --export file, else the built-in defaults)",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        metavar="S",
        help="sampler seed (default 0; on --resume the checkpoint's)",
    )
    p.add_argument(
        "--metric",
        choices=("mape", "rmse", "mae", "mase"),
        default="mape",
        help="walk-forward metric (default mape; mase for series near or across zero)",
    )
    p.add_argument("--folds", type=positive_int, default=5, metavar="K", help="default 5")
    p.add_argument(
        "--train-window", type=positive_int, default=512, metavar="W", help="default 512"
    )
    p.add_argument(
        "--horizon",
        type=positive_int,
        default=256,
        metavar="H",
        help="one-step forecasts scored per fold (default 256)",
    )
    p.add_argument(
        "--mode",
        choices=("rolling", "anchored"),
        default="rolling",
        help="rolling: cold state and W points per fold; anchored: one expanding scan",
    )
    p.add_argument(
        "--checkpoint-interval", type=positive_int, default=10, metavar="N", help="default 10"
    )
    p.add_argument(
        "--patience",
        type=positive_int,
        default=50,
        metavar="N",
        help="stop after N trials without improvement (default 50)",
    )


class _Progress:
    """One line per trial; a bar redrawn in place on a terminal."""

    def __init__(self, out: IO[str], total: int, as_json: bool) -> None:
        self.out = out
        self.total = total
        self.as_json = as_json
        self.tty = out.isatty() and not as_json
        self.started = time.monotonic()
        self.done_here = 0

    def __call__(self, rec: TrialRecord, opt: BayesianMetaOptimizer) -> None:
        self.done_here += 1
        n = rec.number + 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done_here * max(self.total - n, 0)
        best = opt.best_trial
        if self.as_json:
            self.out.write(
                json.dumps(
                    {
                        "trial": n,
                        "of": self.total,
                        "state": rec.state,
                        "value": rec.value,
                        "best": None if best is None else best.value,
                        "best_trial": None if best is None else best.number + 1,
                        "eta_s": round(eta, 1),
                    }
                )
                + "\n"
            )
            self.out.flush()
            return
        value = f"{rec.value:.6g}" if rec.value is not None else "failed"
        best_s = "-" if best is None else f"{best.value:.6g} (#{best.number + 1})"
        text = (
            f"trial {n}/{self.total}  value {value}  best {best_s}  "
            f"elapsed {_hms(elapsed)}  ETA {_hms(eta)}"
        )
        if self.tty:
            width = 20
            filled = round(width * n / self.total)
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K")
            if n >= self.total:
                self.out.write("\n")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _hms(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_tune(
    args: argparse.Namespace,
    series: NDArray[np.float64],
    *,
    out: IO[str],
    err: IO[str],
    as_json: bool = False,
) -> int:
    """Run the ``tune`` command on ``series``; returns the exit status."""
    import optuna

    from predictor.config import PredictorConfig
    from predictor.errors import ConfigError, ConfigMutationError, IntegrityError
    from predictor.tuning.optimizer import BayesianMetaOptimizer
    from predictor.tuning.settings import TuningSettings
    from predictor.tuning.space import current_values, space_for_tier
    from predictor.tuning.walkforward import WalkForward, WalkForwardSpec

    def fail(reason: str, code: int = EXIT_USAGE) -> int:
        print(f"predictorctl: tune: {reason}", file=err, flush=True)
        return code

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config_file = args.config or args.export
    locked: tuple[str, ...] = ()
    try:
        if config_file is not None:
            base = PredictorConfig.from_toml(config_file, env=False)
            import tomllib

            with open(config_file, "rb") as fh:
                locked = TuningSettings.from_document(tomllib.load(fh)).locked
        else:
            base = PredictorConfig()
        space = space_for_tier(args.tier, base)
        space = {k: v for k, v in space.items() if k not in locked}
        spec = WalkForwardSpec(
            folds=args.folds,
            train_window=args.train_window,
            horizon=args.horizon,
            metric=args.metric,
            mode=args.mode,
        )
        walk = WalkForward(series, spec, base)
    except (OSError, ConfigError, ValueError) as exc:
        return fail(str(exc))

    checkpoint = Path(args.checkpoint or f"{args.study}.study.json")
    trials = args.trials or DEFAULT_TRIALS[args.tier]
    current = current_values(space, base)
    try:
        opt = BayesianMetaOptimizer(
            space,
            walk,
            args.study,
            trials,
            args.tier,
            seed=0 if args.seed is None else args.seed,
            checkpoint_path=checkpoint,
            baseline=current,
            objective_fingerprint=walk.fingerprint(),
            locked=locked,
        )
    except ValueError as exc:
        return fail(str(exc))
    walk.should_stop = lambda: opt.stop_requested

    if args.resume:
        try:
            opt.load_study(checkpoint)
        except FileNotFoundError as exc:
            return fail(f"cannot resume: {exc}")
        except (IntegrityError, ValueError) as exc:
            return fail(f"cannot resume from {checkpoint}: {exc}")
        if args.seed is not None and args.seed != opt.seed:
            return fail(f"--seed {args.seed} differs from the checkpoint's seed {opt.seed}")
    elif checkpoint.exists():
        return fail(f"{checkpoint} exists: use --resume, or another --checkpoint")

    progress = _Progress(out, trials, as_json)
    opt.on_trial = progress
    if not as_json:
        what = f"resuming at trial {opt.iteration + 1}" if args.resume else "new study"
        out.write(
            f"tune {args.study}: {what}; tier {args.tier}, {len(space)} parameters, "
            f"{trials} trials, seed {opt.seed}; {spec.metric} over {spec.folds} folds of "
            f"{spec.horizon} ({spec.mode}, train {spec.train_window}); checkpoint {checkpoint}\n"
        )
        out.flush()
    try:
        opt.optimize(args.checkpoint_interval, args.patience)
    except OSError as exc:
        return fail(f"checkpoint write failed: {exc}")
    progress.finish()

    if opt.stop_signal is not None:
        name = signal.Signals(opt.stop_signal).name
        print(
            f"predictorctl: tune: stopped by {name} after {opt.iteration} trials; "
            f"checkpoint {checkpoint} (continue with --resume)",
            file=err,
            flush=True,
        )
        return 128 + int(opt.stop_signal)
    best = opt.best_trial
    if best is None or best.value is None:
        return fail("no trial completed (every candidate failed)", EXIT_REFUSED)

    first = opt.trials[0] if opt.trials else None
    if first is not None and first.value is not None and first.params == current:
        current_value: float = first.value
    else:
        current_value = walk.evaluate(base).value

    mutation: Mutation | None = None
    if args.export is not None:
        try:
            mutation = opt.result().export_to_toml(args.export)
        except (ConfigMutationError, FileNotFoundError) as exc:
            _report(out, as_json, args, opt, current, current_value, checkpoint, None)
            return fail(f"export refused: {exc}", EXIT_REFUSED)
    _report(out, as_json, args, opt, current, current_value, checkpoint, mutation)
    return EXIT_OK


def _report(
    out: IO[str],
    as_json: bool,
    args: argparse.Namespace,
    opt: BayesianMetaOptimizer,
    current: dict[str, Any],
    current_value: float,
    checkpoint: Path,
    mutation: Mutation | None,
) -> None:
    best = opt.best_trial
    assert best is not None and best.value is not None
    if as_json:
        out.write(
            json.dumps(
                {
                    "ok": True,
                    "study": opt.study_name,
                    "tier": opt.tier,
                    "trials": opt.iteration,
                    "early_stopped": opt.early_stopped,
                    "metric": args.metric,
                    "current_value": current_value,
                    "best_value": best.value,
                    "best_trial": best.number + 1,
                    "current_params": current,
                    "best_params": best.params,
                    "checkpoint": os.fspath(checkpoint),
                    "export": None
                    if mutation is None
                    else {"path": os.fspath(mutation.path), "delta": mutation.delta},
                },
                sort_keys=True,
            )
            + "\n"
        )
        out.flush()
        return
    change = (
        f"{100.0 * (best.value / current_value - 1.0):+.1f}%"
        if math.isfinite(current_value) and current_value != 0
        else "n/a"
    )
    rows = [("parameter", "current", "best")]
    rows.append((f"{args.metric} (walk-forward)", _fmt(current_value), f"{_fmt(best.value)}"))
    rows += [(name, _fmt(current[name]), _fmt(best.params[name])) for name in sorted(current)]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * len(max(lines, key=len)))
    stop = " (early stop)" if opt.early_stopped else ""
    lines.append(f"best of {opt.iteration} trials{stop}: trial {best.number + 1}, {change}")
    if mutation is not None:
        lines.append(
            f"exported to {mutation.path}: {len(mutation.delta)} keys changed"
            if mutation.changed
            else f"exported to {mutation.path}: no change"
        )
    out.write("\n".join(lines) + "\n")
    out.flush()


__all__ = ["configure_parser", "run_tune"]
