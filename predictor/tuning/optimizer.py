"""BayesianMetaOptimizer: resumable TPE search (Optuna) over a ``SearchSpace``.

Determinism and exact resumption
--------------------------------
Optuna's ``TPESampler`` draws from its own ``RandomState``; its proposal
for trial ``n`` depends on that RNG's state and on the trial history. To
make a study resumable bit for bit without pickling sampler internals,
the sampler is re-created before every trial with the seed

    seed_n = SeedSequence([seed, n]).generate_state(1)[0]      (uint32)

in every run, interrupted or not. The proposal for trial ``n`` is then a
pure function of ``(seed, n, history of trials 0..n-1)``, and the history
is exactly what a checkpoint stores (parameters, values, states and the
distributions, via ``optuna.distributions.distribution_to_json``). Resuming
replays the stored trials into a fresh study (``study.add_trial``) and
continues at ``n = len(history)``: the continued study is identical to an
uninterrupted one with the same seed. The checkpoint's ``rng_state`` holds
``seed``, the number of trials done and the next trial's seed.

The optimizer only ever holds completed (``COMPLETE``) and failed
(``FAIL``: invalid candidate config, non-finite score) trials; TPE models
the completed ones.

Checkpoints (``save_study``) go to ``checkpoint_path``: every
``checkpoint_interval`` trials, on every new best, on SIGUSR1 (between
trials), and on SIGTERM/SIGINT before ``optimize`` returns. Signal handlers
only set flags; a stop request also interrupts a running walk-forward
evaluation between folds (``stop_requested``), and that unfinished trial is
discarded, so it is proposed again, identically, on resume.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import Trial, TrialState

from predictor.errors import ConfigError
from predictor.tuning.checkpoint import FORMAT, FORMAT_VERSION, read_checkpoint, write_checkpoint
from predictor.tuning.result import OptimizationResult
from predictor.tuning.space import (
    TIERS,
    SearchSpace,
    check_space,
    space_digest,
    space_to_json,
)
from predictor.tuning.walkforward import TrialInterrupted

SamplerKind = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = ("tpe", "random")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Trials over which ``convergence_delta`` measures the last improvement.
CONVERGENCE_WINDOW = 10


def trial_seed(seed: int, number: int) -> int:
    """Sampler seed of trial ``number``: ``SeedSequence([seed, number]).generate_state(1)[0]``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its parameters, state, value and wall time."""

    number: int
    state: Literal["COMPLETE", "FAIL"]
    params: dict[str, Any]
    value: float | None
    duration_s: float = 0.0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": self.state,
            "params": {k: self.params[k] for k in sorted(self.params)},
            "value": self.value,
            "duration_s": self.duration_s,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialRecord:
        state = data["state"]
        if state not in ("COMPLETE", "FAIL"):
            raise ValueError(f"trial {data.get('number')}: unknown state {state!r}")
        value = data["value"]
        if state == "COMPLETE" and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise ValueError(f"trial {data.get('number')}: a complete trial needs a finite value")
        return cls(
            number=int(data["number"]),
            state=state,
            params=dict(data["params"]),
            value=None if value is None else float(value),
            duration_s=float(data.get("duration_s", 0.0)),
            note=str(data.get("note", "")),
        )


class Candidate(dict[str, Any]):
    """The parameters of one proposed trial (a plain dict to the objective).

    ``number`` is the trial's number in the study.
    """

    def __init__(self, trial: Trial) -> None:
        super().__init__(trial.params)
        self.number: int = trial.number


@dataclass
class _Flags:
    """Set by signal handlers (nothing else happens in a handler)."""

    stop_signal: int | None = None
    checkpoint: bool = False
    handlers: dict[int, Any] = field(default_factory=dict)


class BayesianMetaOptimizer:
    """Resumable Bayesian optimisation of a walk-forward objective (Optuna TPE).

    ``objective_fn(params) -> float`` is minimised; it may raise
    ``ConfigError`` (the candidate is recorded as failed) or
    ``TrialInterrupted`` (the trial is discarded and ``optimize`` returns).
    ``max_iterations`` is the total trial budget, resumed trials included.
    ``baseline`` (e.g. the current config's values) is evaluated as trial
    0 of a new study, parameters outside the space being sampled instead.
    ``sampler="random"`` replaces TPE by random search (benchmarks).

    ``optimize`` runs the loop; the specification's manual loop works too
    (``_suggest_next_candidate`` proposes a dict, ``_report_trial`` records
    its objective, ``_iteration`` / ``_best_params`` / ``_best_value``
    read the progress):

    >>> from predictor.tuning.space import SearchSpace
    >>> space = {"cusum_k": SearchSpace("cusum_k", "float", (0.3, 1.5))}
    >>> def objective(p):
    ...     return (p["cusum_k"] - 1.0) ** 2
    >>> opt = BayesianMetaOptimizer(space, objective, "demo", 6, n_startup_trials=3)
    >>> for i in range(opt._iteration, opt.max_iterations):
    ...     candidate = opt._suggest_next_candidate()
    ...     record = opt._report_trial(candidate, objective(candidate))
    >>> opt._iteration, sorted(opt._best_params), opt._best_value < 0.1
    (6, ['cusum_k'], True)
    """

    def __init__(
        self,
        search_space: Mapping[str, SearchSpace],
        objective_fn: Callable[[dict[str, Any]], float],
        study_name: str,
        max_iterations: int,
        tier: str = "fast",
        *,
        seed: int = 0,
        sampler: SamplerKind = "tpe",
        n_startup_trials: int = 10,
        checkpoint_path: str | Path | None = None,
        baseline: Mapping[str, Any] | None = None,
        objective_fingerprint: str | None = None,
        locked: tuple[str, ...] = (),
        on_trial: Callable[[TrialRecord, BayesianMetaOptimizer], None] | None = None,
    ) -> None:
        if tier not in TIERS:
            raise ValueError(f"Invalid tier: {tier!r}. Must be 'fast' or 'deep'")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        if not study_name:
            raise ValueError("study_name must not be empty")
        self.search_space = check_space(search_space, locked)
        self.objective_fn = objective_fn
        self.study_name = study_name
        self.max_iterations = max_iterations
        self.tier = tier
        self.seed = seed
        self.sampler_kind: SamplerKind = sampler
        self.n_startup_trials = n_startup_trials
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.objective_fingerprint = objective_fingerprint
        self.on_trial = on_trial
        self.baseline = {
            k: v for k, v in (baseline or {}).items() if k in self.search_space
        } or None
        self.early_stopped = False
        self._distributions: dict[str, BaseDistribution] = {
            name: self.search_space[name].distribution() for name in sorted(self.search_space)
        }
        self._records: list[TrialRecord] = []
        self._best_index: int | None = None
        self._flags = _Flags()
        self._pending: Trial | None = None
        #: Writes the automatic checkpoints (``AsyncMetaOptimizer`` swaps in a thread).
        self.checkpoint_writer: Callable[[Path], Any] = self.save_study
        self._study = self._replay([])

    # --- state ------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Trials done (the next trial's number)."""
        return len(self._records)

    @property
    def trials(self) -> tuple[TrialRecord, ...]:
        """Every finished trial, in order."""
        return tuple(self._records)

    @property
    def best_trial(self) -> TrialRecord | None:
        """Lowest complete trial (the earliest among equals), None before any."""
        return None if self._best_index is None else self._records[self._best_index]

    @property
    def best_value(self) -> float:
        """Best objective so far (``inf`` before any complete trial)."""
        best = self.best_trial
        return float("inf") if best is None or best.value is None else best.value

    @property
    def best_params(self) -> dict[str, Any] | None:
        """Parameters of the best trial."""
        best = self.best_trial
        return None if best is None else dict(best.params)

    @property
    def study(self) -> optuna.Study:
        """The in-memory Optuna study (finished trials only between calls)."""
        return self._study

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM/SIGINT arrived or ``request_stop`` was called."""
        return self._flags.stop_signal is not None

    @property
    def stop_signal(self) -> int | None:
        """The signal that stopped the last ``optimize`` (None if it was not stopped)."""
        return self._flags.stop_signal

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask ``optimize`` to checkpoint and return (thread-safe: sets a flag)."""
        self._flags.stop_signal = signum

    def request_checkpoint(self) -> None:
        """Ask ``optimize`` for a checkpoint after the current trial (sets a flag)."""
        self._flags.checkpoint = True

    def trials_since_best(self) -> int:
        """Trials finished after the best one (all of them before any best)."""
        if self._best_index is None:
            return len(self._records)
        return len(self._records) - 1 - self._best_index

    # --- sampling ---------------------------------------------------------
    def _sampler_for(self, number: int) -> BaseSampler:
        seed = trial_seed(self.seed, number)
        if self.sampler_kind == "random":
            return RandomSampler(seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return TPESampler(
                seed=seed,
                n_startup_trials=self.n_startup_trials,
                multivariate=True,
                constant_liar=False,
            )

    def _replay(self, records: list[TrialRecord]) -> optuna.Study:
        """A fresh in-memory study holding ``records`` (the resume path)."""
        study = optuna.create_study(
            direction="minimize", study_name=self.study_name, sampler=self._sampler_for(0)
        )
        for rec in records:
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.COMPLETE if rec.state == "COMPLETE" else TrialState.FAIL,
                    value=rec.value if rec.state == "COMPLETE" else None,
                    params={k: rec.params[k] for k in sorted(rec.params)},
                    distributions=self._distributions,
                )
            )
        return study

    # --- the specification's manual loop ---------------------------------
    @property
    def _iteration(self) -> int:
        """Trials done: where a manual loop continues (``range(_iteration, max_iterations)``)."""
        return len(self._records)

    @property
    def _best_params(self) -> dict[str, Any] | None:
        """The specification's name of ``best_params``."""
        return self.best_params

    @property
    def _best_value(self) -> float:
        """The specification's name of ``best_value`` (``inf`` before any)."""
        return self.best_value

    def _suggest_next_candidate(self) -> Candidate:
        """Propose the next trial's parameters (a dict) for a manual loop.

        Evaluate them, then hand the same dict to ``_report_trial``; the
        proposal is the one ``optimize`` would make at this point.
        """
        if self._pending is not None:
            raise RuntimeError(
                f"trial {self._pending.number} was proposed and not reported: "
                "call _report_trial(candidate, objective) first"
            )
        trial = self._ask()
        self._pending = trial
        return Candidate(trial)

    def _report_trial(
        self,
        candidate: Mapping[str, Any],
        objective: float | None,
        duration_s: float = 0.0,
        note: str = "",
    ) -> TrialRecord:
        """Record the objective of the candidate last proposed (minimised).

        A non-finite or None objective records a failed trial.
        """
        trial = self._pending
        if trial is None or dict(candidate) != dict(trial.params):
            raise ValueError("report the candidate returned by the last _suggest_next_candidate()")
        self._pending = None
        value = None if objective is None else float(objective)
        return self._tell(trial, value, duration_s, note)

    def _ask(self) -> Trial:
        number = len(self._records)
        self._study.sampler = self._sampler_for(number)
        if number == 0 and self.baseline is not None:
            fixed = {k: v for k, v in self.baseline.items() if self.search_space[k].contains(v)}
            if fixed:
                self._study.enqueue_trial(fixed)
        trial = self._study.ask(self._distributions)
        if trial.number != number:
            raise RuntimeError(f"study out of step: trial {trial.number}, expected {number}")
        return trial

    def _tell(
        self, trial: Trial, value: float | None, duration_s: float, note: str = ""
    ) -> TrialRecord:
        params = {k: trial.params[k] for k in sorted(trial.params)}
        if value is not None and math.isfinite(value):
            score = float(value)
            self._study.tell(trial, score)
            rec = TrialRecord(trial.number, "COMPLETE", params, score, duration_s, note)
            if self._best_index is None or score < self.best_value:
                self._best_index = len(self._records)
        else:
            self._study.tell(trial, state=TrialState.FAIL)
            reason = note or f"non-finite objective {value!r}"
            rec = TrialRecord(trial.number, "FAIL", params, None, duration_s, reason)
        self._records.append(rec)
        return rec

    def run_trial(self) -> TrialRecord | None:
        """Propose, evaluate and record one trial; None if it was interrupted."""
        if self._pending is not None:
            raise RuntimeError(f"trial {self._pending.number} is waiting for _report_trial")
        trial = self._ask()
        params = dict(trial.params)
        started = time.perf_counter()
        try:
            value: float | None = float(self.objective_fn(params))
            note = ""
        except TrialInterrupted:
            # Drop the unfinished trial: resuming proposes it again, identically.
            self._study = self._replay(self._records)
            return None
        except ConfigError as exc:
            value, note = None, f"invalid config: {exc}"
        except BaseException as exc:
            self._tell(trial, None, time.perf_counter() - started, f"error: {exc!r}")
            raise
        return self._tell(trial, value, time.perf_counter() - started, note)

    # --- main loop --------------------------------------------------------
    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """SIGTERM/SIGINT request a stop, SIGUSR1 a checkpoint (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGUSR1:
                self._flags.checkpoint = True
            else:
                self._flags.stop_signal = signum

        previous = {s: signal.signal(s, on_signal) for s in (*STOP_SIGNALS, signal.SIGUSR1)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _checkpoint(self) -> None:
        self._flags.checkpoint = False
        if self.checkpoint_path is not None:
            self.checkpoint_writer(self.checkpoint_path)

    def optimize(
        self, checkpoint_interval: int = 10, early_stopping_patience: int = 50
    ) -> dict[str, Any] | None:
        """Run trials until ``max_iterations``, early stopping, or a stop signal.

        Returns the best parameters (None if no trial completed). After it
        returns, ``stop_signal`` tells whether SIGTERM/SIGINT ended it and
        ``early_stopped`` whether ``early_stopping_patience`` trials passed
        without improvement. A final checkpoint is written in every case.
        """
        if checkpoint_interval < 1:
            raise ValueError(f"checkpoint_interval must be >= 1, got {checkpoint_interval}")
        if early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1, got {early_stopping_patience}")
        self.early_stopped = False
        self._flags.stop_signal = None
        with self._signal_handlers():
            while len(self._records) < self.max_iterations and not self.stop_requested:
                if self.trials_since_best() >= early_stopping_patience:
                    self.early_stopped = True
                    break
                best_before = self._best_index
                rec = self.run_trial()
                if rec is None:
                    break
                if self.on_trial is not None:
                    self.on_trial(rec, self)
                improved = self._best_index != best_before
                periodic = len(self._records) % checkpoint_interval == 0
                if improved or periodic or self._flags.checkpoint:
                    self._checkpoint()
            self._checkpoint()
        return self.best_params

    # --- checkpoints ------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        """The JSON document ``save_study`` writes (a snapshot: safe to hand to a thread)."""
        n = len(self._records)
        best = self.best_trial
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "study_name": self.study_name,
            "tier": self.tier,
            "seed": self.seed,
            "sampler": {
                "kind": self.sampler_kind,
                "n_startup_trials": self.n_startup_trials,
                "multivariate": True,
                "reseed": "per trial: SeedSequence([seed, trial_number]).generate_state(1)[0]",
            },
            "search_space": space_to_json(self.search_space),
            "space_digest": space_digest(self.search_space),
            "distributions": {k: distribution_to_json(d) for k, d in self._distributions.items()},
            "objective_fingerprint": self.objective_fingerprint,
            "baseline": self.baseline,
            "max_iterations": self.max_iterations,
            "iteration": n,
            "best_trial": None if best is None else best.number,
            "best_value": None if best is None else best.value,
            "best_params": None if best is None else dict(best.params),
            "rng_state": {
                "seed": self.seed,
                "trials_done": n,
                "next_trial_seed": trial_seed(self.seed, n),
            },
            "trials": [r.to_json() for r in self._records],
            "timestamp_ns": time.time_ns(),
        }

    def save_study(self, path: str | Path | None = None) -> None:
        """Write the checkpoint (JSON, atomic, ``<path>.sha256`` sidecar)."""
        target = Path(path) if path is not None else self.checkpoint_path
        if target is None:
            raise ValueError("no checkpoint path given")
        write_checkpoint(target, self.checkpoint_payload())

    def load_study(self, path: str | Path) -> None:
        """Resume from a checkpoint: verify, check identity, replay the trials.

        Raises ``FileNotFoundError`` (checkpoint or sidecar missing),
        ``IntegrityError`` (SHA-256 mismatch) and ``ValueError`` (another
        study name, tier, search space, sampler or objective). The
        checkpoint's seed is adopted: a study continues its own seed stream.
        """
        doc = read_checkpoint(path)
        if doc["study_name"] != self.study_name:
            raise ValueError(
                f"Study name mismatch: checkpoint is for {doc['study_name']!r}, "
                f"but optimizer is {self.study_name!r}"
            )
        if doc["tier"] != self.tier:
            raise ValueError(f"tier mismatch: checkpoint {doc['tier']!r}, optimizer {self.tier!r}")
        stored = {k: json_to_distribution(v) for k, v in doc["distributions"].items()}
        if doc["space_digest"] != space_digest(self.search_space) or stored != self._distributions:
            raise ValueError("search space mismatch: the checkpoint was made for another space")
        sampler = doc["sampler"]
        if (sampler["kind"], sampler["n_startup_trials"]) != (
            self.sampler_kind,
            self.n_startup_trials,
        ):
            raise ValueError(
                f"sampler mismatch: checkpoint {sampler}, optimizer {self.sampler_kind}"
            )
        theirs = doc.get("objective_fingerprint")
        if theirs and self.objective_fingerprint and theirs != self.objective_fingerprint:
            raise ValueError(
                "objective mismatch: the checkpoint was scored on another series, "
                "fold layout or base config"
            )
        records = [TrialRecord.from_json(t) for t in doc["trials"]]
        for i, rec in enumerate(records):
            if rec.number != i or set(rec.params) != set(self._distributions):
                raise ValueError(f"checkpoint trial {i} does not fit the search space")
        self.seed = int(doc["seed"])
        self._records = records
        self._pending = None
        self._best_index = None
        for i, rec in enumerate(records):
            if rec.value is not None and (self._best_index is None or rec.value < self.best_value):
                self._best_index = i
        self._study = self._replay(records)

    # --- result -------------------------------------------------------------
    def convergence_delta(self, window: int = CONVERGENCE_WINDOW) -> float:
        """Improvement of the best value over the last ``window`` trials (>= 0).

        ``best(after trial n - window) - best(now)``; when no trial had
        completed by then, the first complete value stands in for the
        earlier best. 0 before any complete trial.
        """
        done = [r for r in self._records if r.value is not None]
        if not done:
            return 0.0
        cut = len(self._records) - window
        earlier = [r.value for r in self._records[: max(cut, 0)] if r.value is not None]
        before = min(earlier) if earlier else done[0].value
        assert before is not None
        return float(before - self.best_value)

    def result(self) -> OptimizationResult:
        """The campaign's ``OptimizationResult`` (requires a complete trial)."""
        best = self.best_trial
        if best is None or best.value is None:
            raise ValueError("no trial completed: there is no result to export")
        return OptimizationResult(
            study_name=self.study_name,
            tier=self.tier,
            best_params=dict(best.params),
            best_objective=best.value,
            total_iterations=len(self._records),
            early_stopped=self.early_stopped,
            convergence_delta=self.convergence_delta(),
            timestamp_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )


__all__ = [
    "SAMPLERS",
    "BayesianMetaOptimizer",
    "Candidate",
    "TrialRecord",
    "trial_seed",
]
