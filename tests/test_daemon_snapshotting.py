"""Admin ``snapshot`` paths (``predictor.daemon.snapshotting``): never out of the directory.

A refused path is answered with an error before any state is copied (the
payload callable of these tests fails if it is ever called) and nothing is
written anywhere; the daemon-level check (``test_daemon_hardening``) writes
a real snapshot inside the directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import structlog

from predictor.daemon.lifecycle import Mailbox
from predictor.daemon.metrics import DaemonMetrics
from predictor.daemon.snapshotting import Snapshotter
from predictor.snapshots import AsyncSnapshotWriter, SnapshotStore


def no_payload() -> dict[str, Any]:
    raise AssertionError("a refused snapshot must not copy the state")


@pytest.fixture
def snapshotter(tmp_path: Path) -> Iterator[Snapshotter]:
    store_dir = tmp_path / "deep" / "er" / "state"
    store_dir.mkdir(parents=True)
    writer = AsyncSnapshotWriter(max_workers=1)
    mailbox = Mailbox()
    s = Snapshotter(
        SnapshotStore(store_dir, keep=2),
        writer,
        mailbox,
        DaemonMetrics(reasons=()),
        structlog.get_logger(),
        payload=no_payload,
        ticks=lambda: 0,
        interval_s=3600.0,
        restored=None,
    )
    try:
        yield s
    finally:
        writer.close(timeout=5.0)
        mailbox.close()


def files_under(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize(
    "requested",
    [
        "../../../../tmp/x",
        "../x",
        "..",
        "sub/../../x",
        "link/x",  # a symbolic link inside the directory that leads out
        "",
    ],
)
def test_paths_out_of_the_snapshot_directory_are_refused(
    snapshotter: Snapshotter, tmp_path: Path, requested: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (snapshotter.store.directory / "link").symlink_to(outside)
    before = files_under(tmp_path)
    reply: Future[dict[str, Any]] = Future()
    snapshotter.start(requested, reply)
    answer = reply.result(timeout=5)
    assert answer["ok"] is False and answer["error"].startswith("snapshot refused: "), answer
    assert snapshotter.writer.pending() == 0
    assert files_under(tmp_path) == before
    target = os.path.normpath(snapshotter.store.directory / requested)
    if requested not in ("..", ""):  # those name existing directories
        assert not os.path.lexists(target)  # e.g. nothing where ../../../../tmp/x leads
