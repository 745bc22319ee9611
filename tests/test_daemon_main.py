"""predictord's entry point: config loading, the XLA environment, --check-config,
the runtime-directory lock and the batch-bucket rule (no daemon started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from predictor.config import PredictorConfig
from predictor.daemon.loading import load_config
from predictor.daemon.main import apply_environment, main
from predictor.daemon.settings import DaemonSettings
from predictor.errors import ConfigError
from predictor.xla import ISA_FLAG

REPO = Path(__file__).resolve().parents[1]


def test_embedded_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREDICTOR_CUSUM_H", raising=False)
    loaded = load_config(None)
    assert loaded.path is None
    assert loaded.predictor == PredictorConfig()
    assert loaded.daemon == DaemonSettings()
    assert len(loaded.sha256) == 64
    monkeypatch.setenv("PREDICTOR_CUSUM_H", "9.0")
    other = load_config(None)
    assert other.predictor.cusum_h == 9.0 and other.sha256 != loaded.sha256


def test_file_tables_are_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[predictor]\nclock = "event"\n[daemon]\nmax_drain = 77\n')
    loaded = load_config(good)
    assert loaded.predictor.clock == "event" and loaded.daemon.max_drain == 77
    assert loaded.path == good.absolute()
    import hashlib

    assert loaded.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    for text, key in [
        ("[predictor]\ncusum_h = -1.0\n", "cusum_h"),
        ("[daemon]\nmax_drain = 0\n", "daemon.max_drain"),
        ("[daemon]\nno_such_key = 1\n", "daemon.no_such_key"),
        ("[nonsense]\n", "nonsense"),
        ("[predictor\n", "<file>"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        assert info.value.field == key


def test_environment_for_jax_is_set_before_import(tmp_path: Path) -> None:
    settings = DaemonSettings(
        xla_mem_fraction=0.5,
        xla_allocator="bfc",
        gpu_allow_growth=False,
        snapshot_dir=str(tmp_path),
    )
    env: dict[str, str] = {}
    out = apply_environment(settings, None, env)
    assert out == {
        "JAX_PLATFORMS": "cpu",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5",
        "XLA_PYTHON_CLIENT_ALLOCATOR": "bfc",
        "TF_FORCE_GPU_ALLOW_GROWTH": "false",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "XLA_FLAGS": ISA_FLAG,  # the determinism contract's instruction-set cap
    }
    # An operator's explicit environment wins over the file; --device over both.
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9", "JAX_PLATFORMS": "cuda"}
    apply_environment(settings, None, env)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9" and env["JAX_PLATFORMS"] == "cuda"
    apply_environment(settings, "cpu", env)
    assert env["JAX_PLATFORMS"] == "cpu"
    apply_environment(settings, "auto", env)
    assert "JAX_PLATFORMS" not in env
    env = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2 --xla_dump_to=/dev/null"}
    assert apply_environment(settings, None, env)["XLA_FLAGS"] == env["XLA_FLAGS"]
    assert ISA_FLAG not in env["XLA_FLAGS"]  # an explicit cap is kept
    env = {}
    apply_environment(DaemonSettings(xla_allocator="default", device="gpu"), None, env)
    assert "XLA_PYTHON_CLIENT_ALLOCATOR" not in env and env["JAX_PLATFORMS"] == "cuda"


def test_main_module_does_not_import_jax() -> None:
    code = "import sys, predictor.daemon.main; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_library_import_leaves_the_compilation_cache_alone() -> None:
    """Only the entry point chooses a persistent cache; importing the package must not."""
    code = (
        "import jax, predictor.daemon.service, predictor.core.functional; "
        "print(jax.config.jax_compilation_cache_dir)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None"


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[daemon]\nmetrics_port = 0\n")
    assert main(["--config", str(cfg), "--check-config"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["daemon"]["metrics_port"] == 0
    cfg.write_text("[daemon]\nmetrics_port = -5\n")
    assert main(["--config", str(cfg), "--check-config"]) == 2
    assert "daemon.metrics_port" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml"), "--check-config"]) == 2


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    from predictor.daemon.lifecycle import AlreadyRunningError, acquire_lock

    fd = acquire_lock(tmp_path / "predictord.lock")
    try:
        assert (tmp_path / "predictord.lock").read_text().strip().isdigit()
        with pytest.raises(AlreadyRunningError, match="locked by pid"):
            acquire_lock(tmp_path / "predictord.lock")
    finally:
        os.close(fd)
    os.close(acquire_lock(tmp_path / "predictord.lock"))  # free again once released
