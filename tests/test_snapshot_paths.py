"""Admin ``snapshot`` targets: relative paths stay inside the snapshot directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from predictor.snapshots import SnapshotPathError, resolve_snapshot_path


@pytest.fixture
def snapdir(tmp_path: Path) -> Path:
    d = tmp_path / "state" / "snapshots"
    (d / "manual").mkdir(parents=True)
    return d


@pytest.mark.parametrize(
    "requested",
    ["../../../../tmp/x", "..", ".", "manual/../../x", "manual/../../snapshots-evil/x"],
)
def test_climbing_out_is_refused(snapdir: Path, requested: str) -> None:
    with pytest.raises(SnapshotPathError, match="leaves the snapshot directory"):
        resolve_snapshot_path(snapdir, requested)


@pytest.mark.parametrize(
    ("requested", "inside"),
    [("a.snapshot", "a.snapshot"), ("manual/b", "manual/b"), ("manual/../c", "c"), ("./d", "d")],
)
def test_relative_paths_resolve_inside(snapdir: Path, requested: str, inside: str) -> None:
    assert resolve_snapshot_path(snapdir, requested) == snapdir.resolve() / inside


def test_absolute_path_is_the_operators_choice(snapdir: Path, tmp_path: Path) -> None:
    assert resolve_snapshot_path(snapdir, str(tmp_path / "x.snap")) == tmp_path / "x.snap"


def test_symlinks_leading_out_are_refused(snapdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, snapdir / "escape")
    with pytest.raises(SnapshotPathError, match="symbolic link"):
        resolve_snapshot_path(snapdir, "escape/x")
    os.symlink(outside / "target", snapdir / "file-link")
    with pytest.raises(SnapshotPathError, match="symbolic link"):
        resolve_snapshot_path(snapdir, "file-link")
    # A link to a subdirectory that stays inside is fine.
    os.symlink(snapdir / "manual", snapdir / "alias")
    assert resolve_snapshot_path(snapdir, "alias/y") == snapdir.resolve() / "manual" / "y"


def test_other_bad_targets_are_refused(snapdir: Path) -> None:
    with pytest.raises(SnapshotPathError, match="is a directory"):
        resolve_snapshot_path(snapdir, "manual")
    with pytest.raises(SnapshotPathError, match="not a directory"):
        resolve_snapshot_path(snapdir, "missing/x")
    with pytest.raises(SnapshotPathError, match="temporary"):
        resolve_snapshot_path(snapdir, ".x.123.tmp")
    with pytest.raises(SnapshotPathError, match="non-empty"):
        resolve_snapshot_path(snapdir, "")
    assert issubclass(SnapshotPathError, ValueError)
