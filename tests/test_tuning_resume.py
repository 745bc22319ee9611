"""``predictorctl tune``: SIGTERM at trial 15 of 30, resume, compare with an uninterrupted run.

The study runs the real walk-forward objective (300-point switching
series, anchored MASE over 2 folds of 100, the cheap layout of
``bench.tuning``; the scan shape of test_tuning_walkforward) through the
command line. The interrupted run is a subprocess killed with SIGTERM as
soon as it reports trial 15; it must checkpoint and exit 143; a second
subprocess resumes it (``--resume``); the uninterrupted run (same seed)
goes through ``cli.main`` in this process (first, so that the compiled
scan is in the persistent XLA cache before the subprocesses start). Both checkpoints must hold the
same 30 trials (parameters, values, states) and the same best parameters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.tuning import CHEAP_BASE, switching_series
from predictor.admin import cli
from predictor.tuning.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
WALK = [
    "--metric", "mase", "--folds", "2", "--train-window", "100",
    "--horizon", "100", "--mode", "anchored",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tune")
    ys = switching_series(np.random.default_rng(5), 300)
    (d / "series.csv").write_text("y\n" + "\n".join(repr(float(v)) for v in ys) + "\n")
    lines = ["[predictor]"]
    for key, value in CHEAP_BASE.items():
        lines.append(f"{key} = {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    (d / "config.toml").write_text("\n".join(lines) + "\n[daemon]\nmetrics_port = -1\n")
    return d


def tune_args(d: Path, checkpoint: str, *extra: str) -> list[str]:
    return [
        "tune", "--series", str(d / "series.csv"), "--tier", "fast", "--trials", "30",
        "--study", "resume-test", "--checkpoint", str(d / checkpoint),
        "--config", str(d / "config.toml"), *WALK, *extra,
    ]  # fmt: skip


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "predictor.admin.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def history(path: Path) -> list[tuple[object, ...]]:
    return [
        (t["number"], t["state"], t["params"], t["value"]) for t in read_checkpoint(path)["trials"]
    ]


def test_sigterm_resume_equals_uninterrupted(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The uninterrupted run first: it compiles the scan in this process, and
    # the subprocesses then load it from the persistent XLA cache.
    code = cli.main(tune_args(workdir, "whole.json", "--seed", "7"))
    whole_out = capsys.readouterr().out
    assert code == 0
    progress = [ln for ln in whole_out.splitlines() if ln.startswith("trial ")]
    assert [ln.split()[1] for ln in progress] == [f"{n}/30" for n in range(1, 31)]
    assert all("best" in ln and "ETA" in ln for ln in progress)
    assert "mase (walk-forward)" in whole_out and "best of 30 trials" in whole_out

    proc = spawn(tune_args(workdir, "killed.json", "--seed", "7"))
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("trial 15/30"):
            proc.send_signal(signal.SIGTERM)
            break
    else:
        pytest.fail("no trial 15 line: " + "".join(seen) + proc.stderr.read())  # type: ignore[union-attr]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    interrupted = read_checkpoint(workdir / "killed.json")
    # killed as trial 15 was reported: 15 done, maybe more if this reader lagged
    assert 15 <= interrupted["iteration"] < 30

    resumed = spawn(tune_args(workdir, "killed.json", "--resume"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming at trial {interrupted['iteration'] + 1}" in out
    assert "trial 30/30" in out

    a, b = read_checkpoint(workdir / "killed.json"), read_checkpoint(workdir / "whole.json")
    assert history(workdir / "killed.json") == history(workdir / "whole.json")
    assert len(a["trials"]) == 30
    assert a["best_params"] == b["best_params"] and a["best_value"] == b["best_value"]
    # trial 0 is the current config (the file's values: the defaults here)
    assert a["trials"][0]["params"]["cusum_h"] == 8.0


def test_cli_refusals(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "exists.json").write_text("{}")
    assert cli.main(tune_args(workdir, "exists.json")) == 2
    assert "use --resume" in capsys.readouterr().err
    assert cli.main(tune_args(workdir, "nothing.json", "--resume")) == 2
    assert "cannot resume" in capsys.readouterr().err
    args = tune_args(workdir, "x.json")
    args[args.index("--mode") + 1] = "rolling"
    args[args.index("--train-window") + 1] = "900"
    assert cli.main(args) == 2
    assert "too short" in capsys.readouterr().err


def test_cli_short_run_exports_with_json_output(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = workdir / "export.toml"
    config.write_text((workdir / "config.toml").read_text())
    args = tune_args(workdir, "short.json", "--export", str(config), "--seed", "3")
    args[args.index("--trials") + 1] = "3"
    args[args.index("--config") : args.index("--config") + 2] = []
    assert cli.main(["--json", *args]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [ln["trial"] for ln in lines[:3]] == [1, 2, 3]
    final = lines[-1]
    assert final["ok"] and final["trials"] == 3 and final["export"]["path"] == str(config)
    assert final["current_value"] == lines[0]["value"]  # trial 1 is the current config
    if final["best_value"] < final["current_value"]:
        assert final["export"]["delta"]
        assert (workdir / "mutations.log").exists()
    assert read_checkpoint(workdir / "short.json")["iteration"] == 3
    assert cli.main([*args[:-2], "--seed", "4", "--resume"]) == 2
    assert "differs from the checkpoint's seed 3" in capsys.readouterr().err
