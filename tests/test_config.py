"""PredictorConfig: ranges, types, unknown keys, TOML and environment sources."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import msgpack
import pytest

from predictor.config import (
    DYNAMIC_FIELDS,
    FIELD_SPECS,
    PredictorConfig,
    default_config_toml,
    env_overrides,
    known_env_names,
    register_env_names,
)
from predictor.core.types import PredictionResult, ProcessState
from predictor.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _bad_values(name: str) -> list[object]:
    """Values just outside the allowed range (or of a wrong kind) of a field."""
    spec = FIELD_SPECS[name]
    if spec.kind == "choice":
        return ["definitely-not-a-choice", 3]
    if spec.kind == "str":
        return ["", 1.0]
    if spec.kind == "depths":
        return [[2, 3], [6, 3], [3, 3], [], "5,3"]
    bad: list[object] = ["1", True]
    if spec.lo is not None:
        below = spec.lo - 1 if spec.kind == "int" else math.nextafter(spec.lo, -math.inf)
        bad.append(spec.lo if spec.lo_open else below)
    if spec.hi is not None:
        above = spec.hi + 1 if spec.kind == "int" else math.nextafter(spec.hi, math.inf)
        bad.append(spec.hi if spec.hi_open else above)
    if spec.kind == "float":
        bad += [math.nan, math.inf]
    else:
        bad.append(1.5)
    return bad


CASES = [(name, value) for name in FIELD_SPECS for value in _bad_values(name)]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_every_field_rejects_out_of_range_and_wrong_type(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        PredictorConfig.from_dict({name: value})
    assert info.value.field == name
    assert name in str(info.value)


def test_every_field_has_a_bound_or_choice() -> None:
    for name, spec in FIELD_SPECS.items():
        if spec.kind in ("float", "int"):
            assert spec.lo is not None and spec.hi is not None, name
        assert spec.doc, name


def test_defaults_are_valid_and_follow_the_model() -> None:
    cfg = PredictorConfig()
    assert cfg.cusum_h == 8.0  # docs/model.md: h = 5 gives a false alarm every ~470 steps
    assert cfg.schema_version == "1.0"
    assert cfg.wtmm_buffer_size == 128 and cfg.log_sig_depth == 3
    assert cfg.log_sig_depth in cfg.shed_ladder
    hash(cfg)  # static argument of jitted functions


def test_relations_between_fields_are_enforced() -> None:
    with pytest.raises(ConfigError, match="signature_window"):
        PredictorConfig(signature_window=200)
    with pytest.raises(ConfigError, match="stiffness_high"):
        PredictorConfig(stiffness_low=3.0, stiffness_high=2.0)
    with pytest.raises(ConfigError, match="log_sig_depth"):
        PredictorConfig(log_sig_depth=4)


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        PredictorConfig.from_dict({"epsilom": 0.1})
    assert info.value.field == "epsilom"


def test_toml_roundtrip_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[predictor]\nepsilon = 0.25\nshed_ladder = [3, 2]\nlog_sig_depth = 2\n")
    cfg = PredictorConfig.from_toml(path, env=False)
    assert cfg.epsilon == 0.25 and cfg.shed_ladder == (3, 2) and cfg.log_sig_depth == 2

    path.write_text("[predictor]\ncusum_hh = 3.0\n")
    with pytest.raises(ConfigError, match="cusum_hh"):
        PredictorConfig.from_toml(path, env=False)

    path.write_text("[predicter]\ncusum_h = 3.0\n")
    with pytest.raises(ConfigError, match="predicter"):
        PredictorConfig.from_toml(path, env=False)

    path.write_text('[predictor]\ncusum_h = "3"\n')
    with pytest.raises(ConfigError, match="cusum_h"):
        PredictorConfig.from_toml(path, env=False)

    path.write_text("[predictor\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        PredictorConfig.from_toml(path, env=False)


def test_int_is_accepted_for_float_but_float_not_for_int() -> None:
    assert PredictorConfig.from_dict({"cusum_h": 7}).cusum_h == 7.0
    with pytest.raises(ConfigError, match="grace_period_steps"):
        PredictorConfig.from_dict({"grace_period_steps": 20.0})


def test_env_overrides_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[predictor]\ncusum_h = 6.0\n")
    monkeypatch.setenv("PREDICTOR_CUSUM_H", "9.5")
    monkeypatch.setenv("PREDICTOR_GRACE_PERIOD_STEPS", "40")
    monkeypatch.setenv("PREDICTOR_SHED_LADDER", "5, 3")
    monkeypatch.setenv("PREDICTOR_CLOCK", "event")
    cfg = PredictorConfig.from_toml(path)
    assert (cfg.cusum_h, cfg.grace_period_steps, cfg.shed_ladder, cfg.clock) == (
        9.5,
        40,
        (5, 3),
        "event",
    )
    monkeypatch.setenv("PREDICTOR_GRACE_PERIOD_STEPS", "forty")
    with pytest.raises(ConfigError, match="PREDICTOR_GRACE_PERIOD_STEPS"):
        PredictorConfig.from_toml(path)
    monkeypatch.setenv("PREDICTOR_GRACE_PERIOD_STEPS", "-1")
    with pytest.raises(ConfigError, match="grace_period_steps"):
        PredictorConfig.from_toml(path)


def test_env_overrides_ignore_unrelated_variables() -> None:
    assert env_overrides({"PREDICTOR_ADMIN_SOCKET": "/tmp/x", "HOME": "/root"}) == {}


def test_shipped_config_toml_is_the_defaults() -> None:
    cfg = PredictorConfig.from_toml(REPO / "deployment" / "config.toml", env=False)
    assert cfg == PredictorConfig()


def test_default_config_toml_documents_every_field(tmp_path: Path) -> None:
    text = default_config_toml()
    for name in FIELD_SPECS:
        assert f"\n{name} = " in text
    (tmp_path / "c.toml").write_text(text)
    assert PredictorConfig.from_toml(tmp_path / "c.toml", env=False) == PredictorConfig()


def test_layout_changes_separate_sensitivities() -> None:
    base = PredictorConfig()
    changed = base.replace(cusum_h=9.0, epsilon=0.5, wtmm_buffer_size=256)
    assert changed.layout_changes(base) == ["wtmm_buffer_size"]
    assert "cusum_h" in DYNAMIC_FIELDS and "wtmm_buffer_size" not in DYNAMIC_FIELDS


@pytest.mark.parametrize(
    ("y", "ok"),
    [(0.0, True), (20.0, True), (-20.0, True), (20.000001, False), (-25.0, False)],
)
def test_validate_domain_bound(y: float, ok: bool) -> None:
    assert ProcessState(y, y, 1).validate_domain() is ok


def test_validate_domain_scales_with_sigma_and_mean() -> None:
    obs = ProcessState(105.0, 105.0, 1)
    assert obs.validate_domain(sigma_val=0.25, mean=100.0)
    assert not obs.validate_domain(sigma_val=0.24, mean=100.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_validate_domain_rejects_non_finite(bad: float) -> None:
    assert not ProcessState(bad, 0.0, 1).validate_domain()
    assert not ProcessState(0.0, bad, 1).validate_domain()


def test_prediction_result_roundtrips_through_msgpack() -> None:
    result = PredictionResult(
        predicted_next=0.125,
        holder_exponent=0.5,
        cusum_drift=1.5,
        distance_to_collapse=6.5,
        free_energy=-0.3,
        kurtosis=3.1,
        dgm_entropy=2.2,
        adaptive_threshold=8.0,
        weights=(0.1, 0.2, 0.3, 0.4),
        sinkhorn_converged=True,
        degraded_inference_mode=False,
        emergency_mode=False,
        regime_change_detected=True,
        mode_collapse_warning=False,
        mode="Robust",
        predicted_value=101.25,
        interval_lower=99.0,
        interval_upper=103.5,
    )
    wire = msgpack.unpackb(msgpack.packb(result.to_dict()))
    assert PredictionResult.from_dict(wire) == result
    assert {f.name for f in dataclasses.fields(PredictionResult)} == set(wire)
    assert all(type(v) in (float, bool, str, list) for v in wire.values())


def test_prediction_result_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        PredictionResult(
            0, 0, 0, 0, 0, 0, 0, 0, (0, 0, 0, 1), True, False, False, False, False, "Chaos", 0, 0, 0
        )


def test_constructor_widens_ints_and_lists_like_from_dict() -> None:
    cfg = PredictorConfig(cusum_h=5, epsilon=1, shed_ladder=[3, 2], log_sig_depth=2)
    assert (cfg.cusum_h, cfg.epsilon, cfg.shed_ladder) == (5.0, 1.0, (3, 2))
    assert isinstance(cfg.cusum_h, float) and isinstance(cfg.shed_ladder, tuple)
    assert cfg == PredictorConfig.from_dict(
        {"cusum_h": 5.0, "epsilon": 1.0, "shed_ladder": (3, 2), "log_sig_depth": 2}
    )
    assert hash(cfg) == hash(
        PredictorConfig(cusum_h=5.0, epsilon=1.0, shed_ladder=(3, 2), log_sig_depth=2)
    )
    # Only lossless widening: a float for an int field and a bool stay refused.
    with pytest.raises(ConfigError, match="grace_period_steps"):
        PredictorConfig(grace_period_steps=20.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cusum_h"):
        PredictorConfig(cusum_h=True)


def test_unknown_key_names_the_nearest_field_only() -> None:
    with pytest.raises(ConfigError) as info:
        PredictorConfig.from_dict({"cusum_hh": 3.0})
    message = str(info.value)
    assert "did you mean 'cusum_h'?" in message
    assert "wtmm_buffer_size" not in message  # not the list of every field
    with pytest.raises(ConfigError) as far:
        PredictorConfig.from_dict({"colour": "blue"})
    assert "did you mean" not in str(far.value) and "docs/configuration.md" in str(far.value)


def test_unknown_key_in_toml_names_the_nearest_field(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[predictor]\nwtmm_bufer_size = 64\n")
    with pytest.raises(ConfigError, match="did you mean 'wtmm_buffer_size'"):
        PredictorConfig.from_toml(path, env=False)


def test_misspelt_environment_variable_is_refused_with_the_nearest_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as info:
        env_overrides({"PREDICTOR_CUSUM_HH": "9"})
    assert info.value.field == "PREDICTOR_CUSUM_HH"
    assert "did you mean 'PREDICTOR_CUSUM_H'?" in str(info.value)
    with pytest.raises(ConfigError, match="PREDICTOR_ADMIN_SOCKET"):
        env_overrides({"PREDICTOR_ADMIN_SOKET": "/run/x"})
    # Through the loader that the daemon and the library use.
    path = tmp_path / "config.toml"
    path.write_text("[predictor]\n")
    monkeypatch.setenv("PREDICTOR_GRACE_PERIOD_STEP", "40")
    with pytest.raises(ConfigError, match="PREDICTOR_GRACE_PERIOD_STEPS"):
        PredictorConfig.from_toml(path)
    assert PredictorConfig.from_toml(path, env=False) == PredictorConfig()


def test_variables_of_other_readers_are_accepted() -> None:
    environ = {
        "PREDICTOR_CONFIG": "/etc/predictor/config.toml",
        "PREDICTOR_ADMIN_SOCKET": "/run/predictor/admin.sock",
        "PREDICTOR_DAEMON_METRICS_PORT": "9200",
        "PREDICTOR_TEST_SLOW_STEP_FILE": "/tmp/x",
        "PREDICTORX": "not ours: no underscore after the prefix",
    }
    assert env_overrides(environ) == {}
    register_env_names("PREDICTOR_EXAMPLE_READER")
    assert env_overrides({"PREDICTOR_EXAMPLE_READER": "1"}) == {}
    assert "PREDICTOR_EXAMPLE_READER" in known_env_names()


@pytest.mark.parametrize(
    ("raw", "ladder"),
    [("5,3,2", (5, 3, 2)), ("5 3 2", (5, 3, 2)), ("4 2", (4, 2)), (" 5, 3 ", (5, 3)), ("3", (3,))],
)
def test_shed_ladder_from_the_environment(raw: str, ladder: tuple[int, ...]) -> None:
    values = env_overrides({"PREDICTOR_SHED_LADDER": raw})
    depth = {"PREDICTOR_LOG_SIG_DEPTH": str(ladder[0])}
    cfg = PredictorConfig.from_dict({**values, **env_overrides(depth)})
    assert cfg.shed_ladder == ladder
