"""Snapshot directory: atomic writes, retention, newest-valid load, crash safety, ENOSPC."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from predictor.snapshots import (
    LayoutMismatchError,
    NoSnapshotError,
    SnapshotStore,
    atomic_write,
    build_payload,
    is_temp_name,
    list_snapshots,
    load_latest,
    load_snapshot,
    restore_sections,
    snapshot_name,
)

SCHEMA = "1.0"
REPO = Path(__file__).resolve().parents[1]


def payload(i: int, n: int = 1000, schema: str = SCHEMA) -> dict[str, Any]:
    """A snapshot whose every array encodes ``i`` (content check after a crash)."""
    state = {"i": np.int64(i), "big": np.full(n, float(i)), "flag": np.bool_(i % 2)}
    return build_payload(
        config={"schema_version": schema},
        global_state=state,
        telemetry={"kurtosis": float(i)},
        flags={"emergency": False},
        kernels={"A": None, "B": None, "C": None, "D": None},
    )


def index_of(p: dict[str, Any], n: int = 1000) -> int:
    template = {"i": np.int64(0), "big": np.zeros(n), "flag": np.bool_(False)}
    g = restore_sections(p, {"global": template})["global"]
    i = int(g["i"])
    assert np.all(g["big"] == float(i)) and bool(g["flag"]) == bool(i % 2)
    return i


def test_names_sort_chronologically_and_never_collide(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    same = 1_700_000_000_123_456_789
    paths = [store.new_path(same) for _ in range(3)] + [store.new_path(same - 10**12)]
    assert len(set(paths)) == 4
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    assert paths[0].name == snapshot_name("snapshot", same)
    assert paths[0].name == "snapshot-20231114T221320.123456789Z.msgpack"
    # A reopened store continues after the newest file present (clock stepped back).
    store.save(payload(0) | {"timestamp": same + 5})
    assert SnapshotStore(tmp_path).new_path(same - 10**12).name > snapshot_name(
        "snapshot", same + 5
    )


def test_retention_keeps_exactly_the_newest_k(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=5)
    saved = [store.save(payload(i)).path for i in range(8)]
    assert [str(p) for p in store.paths()] == saved[::-1][:5]
    assert len(os.listdir(tmp_path)) == 5
    assert index_of(store.load_latest(SCHEMA).payload) == 7
    one = SnapshotStore(tmp_path / "one", keep=1)
    for i in range(3):
        one.save(payload(i))
    assert len(one.paths()) == 1


def test_load_latest_falls_back_and_logs_each_skipped_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=10)
    good = store.save(payload(1)).path
    wrong_schema = store.save(payload(2, schema="0.9")).path
    corrupt = Path(store.save(payload(3)).path)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0x10
    corrupt.write_bytes(data)
    truncated = Path(store.save(payload(4)).path)
    truncated.write_bytes(truncated.read_bytes()[:100])
    empty = store.new_path()
    empty.write_bytes(b"")
    with capture_logs() as logs:
        loaded = load_latest(tmp_path, SCHEMA)
    assert str(loaded.path) == good and index_of(loaded.payload) == 1
    skipped = [e for e in logs if e["event"] == "snapshot_skipped"]
    assert [(Path(e["path"]).name, e["error"]) for e in skipped] == [
        (empty.name, "SnapshotEmptyError"),
        (truncated.name, "SnapshotTruncatedError"),
        (corrupt.name, "IntegrityError"),
        (Path(wrong_schema).name, "SchemaVersionError"),
    ]
    assert all(e["log_level"] == "warning" and e["reason"] for e in skipped)


def test_load_latest_applies_restore_and_raises_when_nothing_fits(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(payload(1, n=1000))
    store.save(payload(2, n=2000))

    def restore(p: dict[str, Any]) -> Any:
        return restore_sections(
            p, {"global": {"i": np.int64(0), "big": np.zeros(1000), "flag": np.bool_(False)}}
        )

    loaded = store.load_latest(SCHEMA, restore=restore)
    assert int(loaded.restored["global"]["i"]) == 1
    with pytest.raises(NoSnapshotError, match="SchemaVersionError"):
        store.load_latest("2.0")
    with pytest.raises(NoSnapshotError, match="no snapshot files"):
        load_latest(tmp_path / "absent", SCHEMA)
    with pytest.raises(LayoutMismatchError):
        restore(load_snapshot(store.paths()[0], SCHEMA))


def test_temp_files_are_never_snapshots_and_are_cleaned_at_startup(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    real = Path(store.save(payload(1)).path)
    # A complete, valid snapshot under a temporary name, "newer" than any file.
    decoy = tmp_path / f".{snapshot_name('snapshot', 4 * 10**18)}.abc123.tmp"
    shutil.copy(real, decoy)
    shutil.copy(real, tmp_path / ".snapshot-partial.tmp")
    assert list_snapshots(tmp_path) == [real]
    assert load_latest(tmp_path, SCHEMA).path == real
    other = tmp_path / ".unrelated.tmp"
    other.write_bytes(b"x")
    SnapshotStore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([real.name, other.name])


def test_atomic_write_leaves_old_file_on_any_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write(target, [b"old"])

    def chunks() -> Any:
        yield b"new-part"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        atomic_write(target, chunks())
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    assert atomic_write(target, [b"ab", memoryview(b"cd")]) == 4
    assert target.read_bytes() == b"abcd" and oct(target.stat().st_mode & 0o777) == "0o600"


def _enospc_after(limit: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch ``os.write``: real writes up to ``limit`` bytes, then ENOSPC."""
    real_write = os.write
    written = [0]

    def write(fd: int, data: Any) -> int:
        if fd <= 2:
            return real_write(fd, data)
        room = limit - written[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, memoryview(data)[:room])
        written[0] += n
        return n

    monkeypatch.setattr(os, "write", write)
    return written


def test_full_disk_keeps_previous_snapshots_and_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    before = {p: p.read_bytes() for p in (Path(store.save(payload(i)).path) for i in range(3))}
    written = _enospc_after(5000, monkeypatch)
    with pytest.raises(OSError) as info:
        store.save(payload(9))
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and written[0] == 5000
    assert {p: p.read_bytes() for p in store.paths()} == before
    assert not [n for n in os.listdir(tmp_path) if is_temp_name(n)]
    assert index_of(store.load_latest(SCHEMA).payload) == 2


# ------------------------------------------------------------ crash safety ---
# A zygote imports the snapshot code once and forks one writer per round, so
# that many SIGKILLs fit in a few seconds. Each writer appends the index of
# every snapshot it completed to a progress file (one os.write per line).
ZYGOTE = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import structlog
    from predictor.snapshots import SnapshotStore, build_payload

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps killed writers

    def write_forever(directory, start, n, progress):
        store = SnapshotStore(directory, keep=5)
        fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        i = start
        while True:
            state = {"i": np.int64(i), "big": np.full(n, float(i)), "flag": np.bool_(i % 2)}
            store.save(build_payload(
                config={"schema_version": "1.0"}, global_state=state,
                telemetry={"kurtosis": float(i)}, flags={"emergency": False},
                kernels={"A": None, "B": None, "C": None, "D": None}))
            os.write(fd, b"%d\\n" % i)
            i += 1

    for line in sys.stdin:
        directory, start, n, progress = line.split()
        pid = os.fork()
        if pid == 0:
            write_forever(directory, int(start), int(n), progress)
        print(pid, flush=True)
    """
)


def _wait_gone(pid: int) -> None:
    for _ in range(1000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"writer {pid} survived SIGKILL")


def test_sigkill_during_writes_never_yields_a_partial_snapshot(tmp_path: Path) -> None:
    n = 250_000  # 2 MB of float64 per snapshot: one write takes ~10-40 ms
    script = tmp_path / "zygote.py"
    script.write_text(ZYGOTE)
    directory = tmp_path / "snaps"
    directory.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    zygote = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    rng = random.Random(7)
    completed, next_index, kills, kills_with_temp = 0, 0, 0, 0
    try:
        while completed < 50:
            kills += 1
            assert kills <= 300, "the writers make no progress"
            progress = tmp_path / f"progress-{kills}.txt"
            zygote.stdin.write(f"{directory} {next_index} {n} {progress}\n".encode())
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
            done = [int(x) for x in progress.read_bytes().split()] if progress.exists() else []
            completed += len(done)
            kills_with_temp += any(is_temp_name(x) for x in os.listdir(directory))
            if not list_snapshots(directory):
                assert not done
                continue
            loaded = load_latest(directory, SCHEMA, restore=lambda p: index_of(p, n))
            assert not is_temp_name(loaded.path.name)
            # Durable: every write reported complete before the kill is there,
            # and at most one more (completed, not yet reported).
            assert loaded.restored >= (done[-1] if done else next_index - 1)
            assert loaded.restored <= (done[-1] if done else next_index - 1) + 1
            next_index = loaded.restored + 1
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=10)
    print(f"{kills} SIGKILLs over {completed} completed writes; {kills_with_temp} left a temp file")
    SnapshotStore(directory)  # startup cleaning
    names = os.listdir(directory)
    # keep + 1: a kill between a write and its retention pass leaves one extra.
    assert not [x for x in names if is_temp_name(x)] and 1 <= len(names) <= 6
