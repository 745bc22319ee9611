"""Config mutation protocol: merge, validation, locks, backups, audit, races, reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bench.tuning import CHEAP_BASE
from predictor.api import ConfigReloadablePredictor
from predictor.config import PredictorConfig
from predictor.errors import ConfigError, ConfigMutationError
from predictor.tuning.result import OptimizationResult

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
# predictor configuration (test)
[predictor]
# CUSUM threshold; hot-reloadable
cusum_h = 8.0
cusum_k = 0.5  # slack
wtmm_buffer_size = {wtmm_buffer_size}
wtmm_num_scales = {wtmm_num_scales}
dgm_solver = "{dgm_solver}"
fd_grid_size = {fd_grid_size}
levy_substeps = {levy_substeps}
signature_window = {signature_window}
wiener_order = {wiener_order}
shed_ladder = [3]

[daemon]
metrics_port = -1
snapshot_interval_s = 30.0
batch_buckets = [1, 8]

[tuning]
locked = ["cusum_k"]
mutations_log = "audit/mutations.log"
""".format(**CHEAP_BASE)


def result(**params: Any) -> OptimizationResult:
    return OptimizationResult(
        study_name="fast-2026",
        tier="fast",
        best_params=params,
        best_objective=0.4321,
        total_iterations=40,
        early_stopped=False,
        convergence_delta=0.01,
        timestamp_utc="2026-01-01T00:00:00Z",
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def audit_lines(config: Path) -> list[dict[str, Any]]:
    log = config.parent / "audit" / "mutations.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def untouched(config: Path) -> None:
    assert config.read_text() == CONFIG
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.toml"]


def test_export_merges_validates_backs_up_and_audits(config: Path) -> None:
    before = config.read_bytes()
    mutation = result(cusum_h=3.5, entropy_window=7, epsilon=0.02).export_to_toml(config)

    doc = tomllib.loads(config.read_text())
    assert doc["predictor"]["cusum_h"] == 3.5 and doc["predictor"]["entropy_window"] == 7
    assert doc["daemon"] == tomllib.loads(CONFIG)["daemon"]
    assert doc["tuning"] == tomllib.loads(CONFIG)["tuning"]
    cfg = PredictorConfig.from_toml(config, env=False)
    assert (cfg.cusum_h, cfg.entropy_window, cfg.cusum_k) == (3.5, 7, 0.5)
    text = config.read_text()
    assert "# CUSUM threshold; hot-reloadable\ncusum_h = 3.5\n" in text  # edited in place
    assert "cusum_k = 0.5  # slack" in text

    # epsilon = 0.02 restates the default: not a change
    assert mutation.delta == {
        "cusum_h": {"old": 8.0, "new": 3.5},
        "entropy_window": {"old": 50, "new": 7},
    }
    assert mutation.backup_latest is not None and mutation.backup_latest.read_bytes() == before
    assert mutation.backup_timestamped is not None
    assert mutation.backup_timestamped.read_bytes() == before
    assert mutation.backup_timestamped.name.startswith("config.toml.bak.")
    assert not config.with_name("config.toml.tmp").exists()

    [record] = audit_lines(config)
    assert record["study"] == "fast-2026" and record["tier"] == "fast"
    assert record["objective"] == 0.4321
    assert record["delta"] == mutation.delta
    assert record["config"] == str(config.resolve())
    logged = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - logged).total_seconds()) < 600

    second = result(cusum_h=4.0).export_to_toml(config)
    assert second.delta == {"cusum_h": {"old": 3.5, "new": 4.0}}
    assert [r["delta"] for r in audit_lines(config)] == [mutation.delta, second.delta]


@pytest.mark.parametrize(
    "params",
    [{"clock": "event"}, {"schema_version": "2.0"}, {"cusum_k": 0.7}, {"snapshot_path": "/x"}],
    ids=["clock", "schema", "tuning-locked", "spec-locked"],
)
def test_locked_key_refused_and_file_untouched(config: Path, params: dict[str, Any]) -> None:
    with pytest.raises(ConfigMutationError, match="locked"):
        result(cusum_h=3.0, **params).export_to_toml(config)
    untouched(config)


@pytest.mark.parametrize(
    "params",
    [{"volatility_alpha": 2.0}, {"signature_window": 128}, {"no_such_key": 1}],
    ids=["range", "relation", "unknown"],
)
def test_invalid_merge_refused_and_file_untouched(config: Path, params: dict[str, Any]) -> None:
    with pytest.raises(ConfigMutationError):
        result(**params).export_to_toml(config)
    untouched(config)


def test_validate_false_skips_the_schema_but_not_the_locks(config: Path) -> None:
    result(volatility_alpha=2.0).export_to_toml(config, validate=False, backup=False)
    with pytest.raises(ConfigError):
        PredictorConfig.from_toml(config)
    with pytest.raises(ConfigMutationError):
        result(clock="event").export_to_toml(config, validate=False)


def test_existing_temp_file_means_concurrent_mutation(config: Path) -> None:
    tmp = config.with_name("config.toml.tmp")
    tmp.write_text("another writer")
    with pytest.raises(ConfigMutationError, match="Concurrent mutation"):
        result(cusum_h=3.0).export_to_toml(config)
    assert config.read_text() == CONFIG and tmp.read_text() == "another writer"
    assert audit_lines(config) == []


def test_no_change_writes_nothing(config: Path) -> None:
    mutation = result(cusum_h=8.0, epsilon=0.02).export_to_toml(config)
    assert not mutation.changed
    untouched(config)


def test_missing_file_and_rewrite_fallback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        result(cusum_h=3.0).export_to_toml(tmp_path / "absent.toml")
    inline = tmp_path / "inline.toml"
    inline.write_text("predictor = { cusum_h = 8.0 }\n[daemon]\nmetrics_port = -1\n")
    result(cusum_h=3.0).export_to_toml(inline, audit_log=tmp_path / "log")
    doc = tomllib.loads(inline.read_text())
    assert doc == {"predictor": {"cusum_h": 3.0}, "daemon": {"metrics_port": -1}}
    bare = tmp_path / "bare.toml"
    bare.write_text("# only the daemon\n[daemon]\nmetrics_port = -1\n")
    result(cusum_h=3.0).export_to_toml(bare, audit_log=tmp_path / "log")
    assert "# only the daemon" in bare.read_text()
    assert tomllib.loads(bare.read_text())["predictor"] == {"cusum_h": 3.0}
    assert len((tmp_path / "log").read_text().splitlines()) == 2


def test_result_schema() -> None:
    with pytest.raises(ValidationError, match="Invalid tier"):
        OptimizationResult(**{**result().model_dump(), "tier": "medium"})
    with pytest.raises(ValidationError):
        result(cusum_h={"nested": 1})
    r = result(cusum_h=3.0)
    with pytest.raises(ValidationError):
        r.best_objective = 1.0  # type: ignore[misc]


RACER = """
import os, sys, time
from pathlib import Path
from predictor.errors import ConfigMutationError
from predictor.tuning.result import OptimizationResult

config, me, value = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
real_fsync = os.fsync

def slow_fsync(fd):
    time.sleep(0.6)  # a slow disk: the winner holds the lock a while
    real_fsync(fd)

os.fsync = slow_fsync
result = OptimizationResult(
    study_name=me, tier="fast", best_params={"cusum_h": value}, best_objective=value,
    total_iterations=1, early_stopped=False, convergence_delta=0.0,
    timestamp_utc="2026-01-01T00:00:00Z",
)
(config.parent / f"ready-{me}").touch()
while not (config.parent / "go").exists():
    time.sleep(0.001)
try:
    result.export_to_toml(config)
except ConfigMutationError as exc:
    print("REFUSED", exc)
else:
    print("OK")
"""


def test_two_concurrent_exporters_one_wins_one_refuses(config: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {
        me: subprocess.Popen(
            [sys.executable, "-c", RACER, str(config), me, value],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for me, value in (("a", "3.0"), ("b", "5.0"))
    }
    deadline = time.monotonic() + 60
    while not all((config.parent / f"ready-{me}").exists() for me in procs):
        assert time.monotonic() < deadline, "racers did not start"
        assert all(p.poll() is None for p in procs.values()), "a racer died"
        time.sleep(0.01)
    (config.parent / "go").touch()
    outcome = {}
    for me, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outcome[me] = out.split()[0]
    assert sorted(outcome.values()) == ["OK", "REFUSED"]
    winner = next(me for me, o in outcome.items() if o == "OK")
    cfg = PredictorConfig.from_toml(config, env=False)
    assert cfg.cusum_h == {"a": 3.0, "b": 5.0}[winner]
    assert tomllib.loads(config.read_text())["daemon"] == tomllib.loads(CONFIG)["daemon"]
    [record] = audit_lines(config)
    assert record["study"] == winner
    assert not config.with_name("config.toml.tmp").exists()


def test_reloadable_predictor_picks_up_the_export(config: Path) -> None:
    predictor = ConfigReloadablePredictor(config, warmup=False)
    assert predictor.config.cusum_h == 8.0
    assert not predictor.check_and_reload_config()
    state = predictor.state
    result(cusum_h=3.5, entropy_window=7).export_to_toml(config)
    assert predictor.check_and_reload_config()
    assert (predictor.config.cusum_h, predictor.config.entropy_window) == (3.5, 7)
    assert float(predictor.functional.params.cusum_h) == 3.5  # applied in place
    assert predictor.state is state  # sensitivities only: no re-initialisation
    assert not predictor.check_and_reload_config()
