"""Search spaces: ranges inside FIELD_SPECS, valid samples, locked parameters refused."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.distributions import distribution_to_json, json_to_distribution

from predictor.config import DYNAMIC_FIELDS, FIELD_SPECS, PredictorConfig
from predictor.tuning.optimizer import BayesianMetaOptimizer
from predictor.tuning.space import (
    LOCKED_FIELDS,
    SearchSpace,
    check_space,
    deep_space,
    fast_space,
    space_digest,
    space_for_tier,
)


def _sample(space: dict[str, SearchSpace], rng: np.random.Generator) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, s in space.items():
        if s.param_type == "categorical":
            out[name] = s.range[int(rng.integers(len(s.range)))]
            continue
        lo, hi = s.range
        # the end points are the riskiest values: draw them often
        u = rng.choice([0.0, 1.0, rng.uniform()])
        if s.param_type in ("log_uniform", "log_int"):
            x = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
        else:
            x = lo + u * (hi - lo)
        out[name] = min(max(round(x), lo), hi) if s.param_type.endswith("int") else float(x)
    return out


def test_fast_tier_is_six_sensitivities_containing_the_defaults() -> None:
    space = fast_space()
    assert len(space) == 6
    assert set(space) <= set(DYNAMIC_FIELDS)
    defaults = PredictorConfig()
    for name, s in space.items():
        assert s.contains(getattr(defaults, name)), name


@pytest.mark.parametrize("tier", ["fast", "deep"])
def test_every_sample_is_a_valid_config(tier: str) -> None:
    base = PredictorConfig()
    space = check_space(space_for_tier(tier, base))
    rng = np.random.default_rng(0)
    for _ in range(300):
        params = _sample(space, rng)
        cfg = base.replace(**params)
        for name, value in params.items():
            assert getattr(cfg, name) == value


def test_deep_tier_is_structural_and_follows_the_ladder() -> None:
    space = deep_space(PredictorConfig().replace(shed_ladder=(4, 2), log_sig_depth=2))
    assert not set(space) & set(DYNAMIC_FIELDS)
    assert space["log_sig_depth"].range == (2, 4)
    assert {
        "dgm_width_size",
        "dgm_depth",
        "dgm_activation",
        "dgm_learning_rate",
        "stiffness_low",
        "stiffness_high",
        "log_sig_depth",
        "wtmm_num_scales",
        "sinkhorn_max_iter",
    } == set(space)


def test_locked_parameters_are_refused() -> None:
    space = fast_space()
    locked = dict(space, cusum_h=SearchSpace("cusum_h", "float", (1.0, 9.0), locked=True))
    with pytest.raises(ValueError, match="locked parameters: \\['cusum_h'\\]"):
        BayesianMetaOptimizer(locked, lambda p: 0.0, "s", 5)
    clock = dict(space, clock=SearchSpace("clock", "categorical", ("wall", "event")))
    with pytest.raises(ValueError, match="clock"):
        check_space(clock)
    with pytest.raises(ValueError, match="epsilon"):
        check_space(space, locked=("epsilon",))
    assert "schema_version" in LOCKED_FIELDS and "shed_ladder" in LOCKED_FIELDS


@pytest.mark.parametrize(
    "bad",
    [
        SearchSpace("volatility_alpha", "float", (0.0, 0.5)),  # field is (0, 1]
        SearchSpace("cusum_h", "float", (1.0, 2e4)),  # field is (0, 1e4]
        SearchSpace("grace_period_steps", "float", (1.0, 5.0)),  # int field
        SearchSpace("dgm_activation", "categorical", ("tanh", "relu")),
        SearchSpace("no_such_field", "float", (0.0, 1.0)),
    ],
)
def test_ranges_must_stay_inside_the_field(bad: SearchSpace) -> None:
    with pytest.raises(ValueError):
        check_space({bad.name: bad})


def test_search_space_shape_errors() -> None:
    with pytest.raises(ValueError):
        SearchSpace("epsilon", "log_uniform", (0.0, 1.0))
    with pytest.raises(ValueError):
        SearchSpace("epsilon", "float", (2.0, 1.0))
    with pytest.raises(ValueError):
        SearchSpace("epsilon", "gaussian", (0.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_space({"eps": SearchSpace("epsilon", "float", (0.1, 1.0))})


def test_json_round_trips_and_digest() -> None:
    space = {**fast_space(), **deep_space()}
    for s in space.values():
        assert SearchSpace.from_json(s.to_json()) == s
        d = s.distribution()
        assert json_to_distribution(distribution_to_json(d)) == d
    assert space_digest(fast_space()) == space_digest(fast_space())
    changed = dict(fast_space(), cusum_h=SearchSpace("cusum_h", "log_uniform", (1.0, 40.0)))
    assert space_digest(changed) != space_digest(fast_space())
    assert set(FIELD_SPECS) >= set(space)
