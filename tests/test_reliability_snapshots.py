"""200 SIGKILLs of a snapshot writer at random moments: no visible file is corrupt.

Runs ``bench.reliability``'s trial driver in its own process (it forks one
writer per trial, which a single-threaded process does safely);
``python -m bench.reliability`` runs 1,000 trials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_two_hundred_sigkills_during_snapshot_writes_give_no_corrupt_load() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["--only", "snapshot-kill", "--trials", "200", "--assets", "300", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reliability", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])["snapshot_kill"]
    print(figures)
    assert figures["trials"] == 200
    assert figures["corrupt"] == 0 and figures["refused"] == 0
    assert figures["loads"] == figures["ok"] >= 200
    assert figures["temp_left"] > 0  # some kills did land in the middle of a write
