"""examples/: each runs on the bundled data as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_forecast_csv_draws_the_nile(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="make test installs matplotlib")
    out = tmp_path / "nile.png"
    done = subprocess.run(
        [sys.executable, "examples/forecast_csv.py", "bench/data/nile.csv", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # 100 rows, a 33-row window: 67 forecasts, each scored against naive.
    assert "67 forecasts: MAE" in done.stdout
    ratio = float(done.stdout.split("ratio ")[1].split(")")[0])
    assert 0.5 < ratio < 1.5


def test_forecast_csv_refuses_an_unknown_column(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "examples/forecast_csv.py",
            "bench/data/nile.csv",
            "--column",
            "flow",
            "--out",
            str(tmp_path / "x.png"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0 and "no column 'flow'; columns: year, volume" in done.stderr
    assert not (tmp_path / "x.png").exists()
