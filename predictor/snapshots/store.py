"""A directory of timestamped snapshots: naming, retention, newest-valid load.

File names are ``<prefix>-YYYYmmddTHHMMSS.nnnnnnnnnZ.msgpack`` (UTC, ns):
fixed width, so the lexical order is the chronological order. Names are
strictly increasing within a directory, even if the wall clock steps back
(a new name is always later than the newest one present). Temporary files
of interrupted writes (``.<name>.<random>.tmp``) never match the pattern;
a store removes its own stale ones when it is opened.

One process writes to a directory at a time (the daemon); readers may run
concurrently.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from predictor.errors import PredictorError
from predictor.snapshots.atomic import fsync_directory, is_temp_name
from predictor.snapshots.codec import DEFAULT_LIMITS, Limits
from predictor.snapshots.errors import NoSnapshotError
from predictor.snapshots.files import SnapshotResult, load_snapshot, save_snapshot

if TYPE_CHECKING:
    from predictor.snapshots.writer import AsyncSnapshotWriter

log = structlog.get_logger(__name__)

DEFAULT_KEEP = 5
DEFAULT_PREFIX = "snapshot"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*$")
_STAMP = r"(?P<stamp>\d{8}T\d{6})\.(?P<ns>\d{9})Z"
_NS = 1_000_000_000


def _name_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-{_STAMP}\.msgpack$")


def snapshot_name(prefix: str, timestamp_ns: int) -> str:
    """``<prefix>-YYYYmmddTHHMMSS.nnnnnnnnnZ.msgpack`` for a Unix time in ns."""
    secs, ns = divmod(int(timestamp_ns), _NS)
    stamp = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}.{ns:09d}Z.msgpack"


def name_timestamp_ns(prefix: str, name: str) -> int | None:
    """Unix time in ns encoded in a snapshot name, None if not a snapshot name."""
    m = _name_re(prefix).match(name)
    if m is None:
        return None
    secs = datetime.strptime(m["stamp"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()
    return int(secs) * _NS + int(m["ns"])


def list_snapshots(directory: str | os.PathLike[str], prefix: str = DEFAULT_PREFIX) -> list[Path]:
    """Snapshot files of ``directory``, newest first (temporary files excluded)."""
    pattern = _name_re(prefix)
    try:
        names = [e.name for e in os.scandir(directory) if e.is_file() and pattern.match(e.name)]
    except FileNotFoundError:
        return []
    return [Path(directory) / n for n in sorted(names, reverse=True)]


@dataclass(frozen=True)
class LoadedSnapshot:
    """A verified snapshot: its path, payload and what ``restore`` made of it."""

    path: Path
    payload: dict[str, Any]
    restored: Any = None


def load_latest(
    directory: str | os.PathLike[str],
    expected_schema: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    limits: Limits = DEFAULT_LIMITS,
    restore: Callable[[dict[str, Any]], Any] | None = None,
) -> LoadedSnapshot:
    """The newest snapshot that verifies (and that ``restore`` accepts).

    Each file refused on the way (corrupt, truncated, too large, another
    schema, a layout ``restore`` rejects, unreadable) is logged as
    ``snapshot_skipped`` with the reason. Raises ``NoSnapshotError`` when
    none is usable.
    """
    reasons: list[str] = []
    for path in list_snapshots(directory, prefix):
        try:
            payload = load_snapshot(path, expected_schema, limits=limits)
            restored = restore(payload) if restore is not None else None
        except (PredictorError, OSError, ValueError) as exc:
            log.warning(
                "snapshot_skipped", path=str(path), error=type(exc).__name__, reason=str(exc)
            )
            reasons.append(f"{path.name}: {type(exc).__name__}: {exc}")
            continue
        return LoadedSnapshot(path, payload, restored)
    detail = "; ".join(reasons) if reasons else "no snapshot files"
    raise NoSnapshotError(f"no usable snapshot in {directory}: {detail}")


class SnapshotStore:
    """Snapshots of one directory, keeping the newest ``keep`` files.

    Opening a store creates the directory and, with ``clean_temp``,
    removes the stale temporary files of writes a crash interrupted.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        keep: int = DEFAULT_KEEP,
        prefix: str = DEFAULT_PREFIX,
        limits: Limits = DEFAULT_LIMITS,
        clean_temp: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix {prefix!r}: letters, digits, '_' and inner '-' only")
        self.directory = Path(directory)
        self.keep = keep
        self.prefix = prefix
        self.limits = limits
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        newest = self.paths()
        self._last_ns = 0
        if newest:
            self._last_ns = name_timestamp_ns(prefix, newest[0].name) or 0
        if clean_temp:
            self.clean_temp_files()

    def paths(self) -> list[Path]:
        """Snapshot files, newest first."""
        return list_snapshots(self.directory, self.prefix)

    def new_path(self, timestamp_ns: int | None = None) -> Path:
        """A fresh name, later than every name handed out or present."""
        with self._lock:
            ns = max(
                time.time_ns() if timestamp_ns is None else int(timestamp_ns), self._last_ns + 1
            )
            while (self.directory / snapshot_name(self.prefix, ns)).exists():
                ns += 1
            self._last_ns = ns
            return self.directory / snapshot_name(self.prefix, ns)

    def _path_for(self, payload: Mapping[str, Any]) -> Path:
        ts = payload.get("timestamp")
        return self.new_path(ts if isinstance(ts, int) and not isinstance(ts, bool) else None)

    def save(self, payload: Mapping[str, Any]) -> SnapshotResult:
        """Write synchronously, then apply retention. Raises on failure."""
        result = save_snapshot(self._path_for(payload), payload)
        self.prune()
        return result

    def submit(
        self, writer: AsyncSnapshotWriter, payload: Mapping[str, Any]
    ) -> Future[SnapshotResult]:
        """Write on ``writer``'s pool; retention runs after a success.

        All requests of one store share one writer slot: a request still
        queued when a newer one arrives resolves as ``superseded``.
        """

        def retain(_result: SnapshotResult) -> None:
            self.prune()

        return writer.submit(
            self._path_for(payload),
            payload,
            key=f"store:{self.directory.resolve()}:{self.prefix}",
            on_success=retain,
        )

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep`` snapshots; return the deleted paths."""
        with self._lock:
            doomed = self.paths()[self.keep :]
            for path in doomed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            if doomed:
                fsync_directory(self.directory)
        return doomed

    def clean_temp_files(self) -> list[Path]:
        """Remove this store's temporary files left by interrupted writes."""
        removed = []
        for entry in os.scandir(self.directory):
            if is_temp_name(entry.name) and entry.name.startswith(f".{self.prefix}-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
                log.info("snapshot_temp_removed", path=entry.path)
        return removed

    def load_latest(
        self, expected_schema: str, *, restore: Callable[[dict[str, Any]], Any] | None = None
    ) -> LoadedSnapshot:
        """``load_latest`` on this store's directory."""
        return load_latest(
            self.directory, expected_schema, prefix=self.prefix, limits=self.limits, restore=restore
        )
