"""Study checkpoints: integrity, identity checks, exact resumption, no pickle.

The objective here is a closed-form function of the parameters (no JAX), so
these tests exercise the optimiser's bookkeeping alone; the real
walk-forward objective is resumed across a SIGTERM in test_tuning_resume.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from predictor.errors import ConfigError, IntegrityError
from predictor.tuning.checkpoint import read_checkpoint, sidecar_path, write_checkpoint
from predictor.tuning.optimizer import BayesianMetaOptimizer, trial_seed
from predictor.tuning.space import SearchSpace, deep_space, fast_space

TARGET = {"epsilon": 0.02, "learning_rate": 50.0, "cusum_h": 4.0, "volatility_alpha": 0.05}


def bowl(params: dict[str, Any]) -> float:
    """Quadratic bowl in log space, minimum 0 at TARGET; fails on one corner."""
    if params["grace_period_steps"] > 200:
        raise ConfigError("grace_period_steps", params["grace_period_steps"], "<= 200 here")
    value = sum((math.log(params[k]) - math.log(v)) ** 2 for k, v in TARGET.items())
    return value + (math.log(params["entropy_window"]) - math.log(8)) ** 2


def deep_bowl(params: dict[str, Any]) -> float:
    bonus = {"tanh": 0.0, "softplus": 0.5, "sin": 1.0}[params["dgm_activation"]]
    return (math.log(params["dgm_width_size"]) - 3.0) ** 2 + bonus + params["stiffness_low"]


def make(tmp_path: Path, n: int, **kw: Any) -> BayesianMetaOptimizer:
    kw.setdefault("seed", 11)
    kw.setdefault("checkpoint_path", tmp_path / "study.json")
    space = kw.pop("space", fast_space())
    objective = kw.pop("objective", bowl)
    name = kw.pop("name", "study")
    return BayesianMetaOptimizer(space, objective, name, n, **kw)


def history(opt: BayesianMetaOptimizer) -> list[tuple[Any, ...]]:
    return [(t.number, t.state, t.params, t.value) for t in opt.trials]


# --- integrity ------------------------------------------------------------------


def test_checkpoint_is_json_with_a_sha256sum_sidecar(tmp_path: Path) -> None:
    opt = make(tmp_path, 12)
    opt.optimize()
    path = tmp_path / "study.json"
    doc = json.loads(path.read_text())  # plain JSON: loading runs no code
    assert doc["iteration"] == 12 and len(doc["trials"]) == 12
    assert doc["best_value"] == opt.best_value and doc["best_params"] == opt.best_params
    assert doc["rng_state"] == {
        "seed": 11,
        "trials_done": 12,
        "next_trial_seed": trial_seed(11, 12),
    }
    assert set(doc["distributions"]) == set(fast_space())
    check = subprocess.run(
        ["sha256sum", "-c", sidecar_path(path).name],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.json", "study.json.sha256"]


def test_flipped_byte_raises_integrity_error(tmp_path: Path) -> None:
    make(tmp_path, 3).optimize()
    path = tmp_path / "study.json"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        make(tmp_path, 5).load_study(path)


def test_missing_sidecar_raises_file_not_found(tmp_path: Path) -> None:
    make(tmp_path, 3).optimize()
    sidecar_path(tmp_path / "study.json").unlink()
    with pytest.raises(FileNotFoundError, match="hash file missing"):
        make(tmp_path, 5).load_study(tmp_path / "study.json")
    with pytest.raises(FileNotFoundError):
        make(tmp_path, 5).load_study(tmp_path / "absent.json")


def test_other_study_space_tier_or_objective_raise_value_error(tmp_path: Path) -> None:
    make(tmp_path, 3, objective_fingerprint="series-A").optimize()
    path = tmp_path / "study.json"
    with pytest.raises(ValueError, match="Study name mismatch"):
        make(tmp_path, 5, name="other").load_study(path)
    narrower = dict(fast_space(), cusum_h=SearchSpace("cusum_h", "log_uniform", (1.0, 20.0)))
    with pytest.raises(ValueError, match="search space"):
        make(tmp_path, 5, space=narrower).load_study(path)
    with pytest.raises(ValueError, match="tier"):
        make(tmp_path, 5, tier="deep").load_study(path)
    with pytest.raises(ValueError, match="objective"):
        make(tmp_path, 5, objective_fingerprint="series-B").load_study(path)
    with pytest.raises(ValueError, match="sampler"):
        make(tmp_path, 5, sampler="random").load_study(path)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_checkpoint(path, {"format": "something-else", "version": 1})
    with pytest.raises(ValueError, match=r"not a predictor\.tuning\.study"):
        read_checkpoint(path)
    write_checkpoint(path, {"format": "predictor.tuning.study", "version": 99})
    with pytest.raises(ValueError, match="version"):
        read_checkpoint(path)


# --- determinism and resumption -------------------------------------------------


@pytest.mark.parametrize("tier", ["fast", "deep"])
def test_resumed_study_equals_uninterrupted(tmp_path: Path, tier: str) -> None:
    kw: dict[str, Any] = (
        {"space": deep_space(), "objective": deep_bowl, "tier": "deep"} if tier == "deep" else {}
    )
    whole = make(tmp_path / "a", 30, baseline={"epsilon": 0.1, "cusum_h": 8.0}, **kw)
    whole.optimize()
    first = make(tmp_path / "b", 13, baseline={"epsilon": 0.1, "cusum_h": 8.0}, **kw)
    first.optimize()
    resumed = make(tmp_path / "b", 30, baseline={"epsilon": 0.1, "cusum_h": 8.0}, **kw)
    resumed.load_study(tmp_path / "b" / "study.json")
    assert resumed.iteration == 13
    resumed.optimize()
    assert history(resumed) == history(whole)
    assert resumed.best_params == whole.best_params
    assert resumed.best_value == whole.best_value
    if tier == "fast":
        assert whole.trials[0].params["epsilon"] == 0.1  # the baseline ran first
        assert whole.trials[0].params["cusum_h"] == 8.0


def test_same_seed_same_history_other_seed_other_history(tmp_path: Path) -> None:
    a = make(tmp_path / "a", 15, seed=5)
    b = make(tmp_path / "b", 15, seed=5)
    c = make(tmp_path / "c", 15, seed=6)
    for opt in (a, b, c):
        opt.optimize()
    assert history(a) == history(b)
    assert history(a) != history(c)


def test_tpe_beats_its_startup_on_a_smooth_bowl(tmp_path: Path) -> None:
    opt = make(tmp_path, 60, checkpoint_path=None)
    opt.optimize(early_stopping_patience=60)
    startup = min(t.value for t in opt.trials[:10] if t.value is not None)
    assert opt.best_value < 0.5 * startup


def test_failed_candidates_are_recorded_and_replayed(tmp_path: Path) -> None:
    def picky(params: dict[str, Any]) -> float:
        if params["entropy_window"] % 2:
            raise ConfigError("entropy_window", params["entropy_window"], "even")
        return math.nan if params["grace_period_steps"] < 4 else bowl(params)

    opt = make(tmp_path, 20, objective=picky)
    opt.optimize()
    states = [t.state for t in opt.trials]
    assert "FAIL" in states and "COMPLETE" in states
    assert all(t.value is None and t.note for t in opt.trials if t.state == "FAIL")
    again = make(tmp_path, 20, objective=picky)
    again.load_study(tmp_path / "study.json")
    assert history(again) == history(opt)
    assert [t.state.name for t in again.study.trials] == states


# --- checkpoint triggers ----------------------------------------------------------


def test_checkpoints_on_interval_best_and_sigusr1(tmp_path: Path) -> None:
    """Worsening values: trial 0 is the only best, so other saves come from the triggers."""
    path = tmp_path / "study.json"
    seen: list[int] = []
    counter = {"n": 0}

    def worsening(params: dict[str, Any]) -> float:
        n = counter["n"]
        counter["n"] += 1
        if path.exists():
            seen.append(json.loads(path.read_text())["iteration"])
        if n == 4:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGUSR1)
        return float(n)

    opt = make(tmp_path, 12, objective=worsening)
    opt.optimize(checkpoint_interval=10, early_stopping_patience=100)
    # before trial n the file holds: 1 (best at trial 0), then 5 after SIGUSR1
    # during trial 4, then 10 (interval); the final save holds all 12.
    assert seen == [1, 1, 1, 1, 5, 5, 5, 5, 5, 10, 10]
    assert json.loads(path.read_text())["iteration"] == 12


def test_early_stopping(tmp_path: Path) -> None:
    opt = make(tmp_path, 40, objective=lambda p: 1.0)
    opt.optimize(early_stopping_patience=6)
    assert opt.early_stopped and opt.iteration == 7
    assert opt.result().early_stopped


def test_stop_request_discards_the_running_trial(tmp_path: Path) -> None:
    from predictor.tuning.walkforward import TrialInterrupted

    holder: dict[str, BayesianMetaOptimizer] = {}
    calls = {"n": 0}

    def interruptible(params: dict[str, Any]) -> float:
        calls["n"] += 1
        if calls["n"] == 8:
            holder["opt"].request_stop()
            raise TrialInterrupted("between folds")
        return bowl(params)

    opt = make(tmp_path / "x", 20, objective=interruptible)
    holder["opt"] = opt
    opt.optimize()
    assert opt.iteration == 7 and opt.stop_requested
    assert read_checkpoint(tmp_path / "x" / "study.json")["iteration"] == 7
    resumed = make(tmp_path / "x", 20)
    resumed.load_study(tmp_path / "x" / "study.json")
    resumed.optimize()
    whole = make(tmp_path / "y", 20)
    whole.optimize()
    assert history(resumed) == history(whole)


def test_result_and_convergence_delta(tmp_path: Path) -> None:
    counter = {"n": 0}

    def descending(params: dict[str, Any]) -> float:
        counter["n"] += 1
        return float(16 - counter["n"])  # 15, 14, ..., 1

    opt = make(tmp_path, 15, objective=descending)
    opt.optimize()
    # best after trial 5 was 11; the best now is 1
    assert opt.convergence_delta() == 10.0
    res = opt.result()
    assert res.best_objective == 1.0 and res.total_iterations == 15 and res.tier == "fast"
    assert res.best_params == opt.trials[-1].params and not res.early_stopped
    empty = make(tmp_path / "e", 3, objective=lambda p: math.nan)
    empty.optimize()
    assert empty.best_params is None and empty.convergence_delta() == 0.0
    with pytest.raises(ValueError, match="no trial completed"):
        empty.result()
