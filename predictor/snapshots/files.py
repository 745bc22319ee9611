"""Synchronous snapshot save and load of one file, streamed record by record."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Literal

from predictor.snapshots.atomic import atomic_write, read_bounded
from predictor.snapshots.chunked import DEFAULT_RECORD_BYTES
from predictor.snapshots.codec import (
    DEFAULT_LIMITS,
    Limits,
    SnapshotEncoder,
    legacy_bound,
    read_container,
    unpack_legacy,
)
from predictor.snapshots.container import is_container
from predictor.snapshots.errors import SnapshotEmptyError, SnapshotTooLargeError

Status = Literal["success", "failed", "superseded"]


@dataclass(frozen=True)
class SnapshotResult:
    """Outcome of one snapshot write.

    ``size`` is the file's byte count and ``checksum`` its hex SHA-256
    trailer (both 0 / "" unless ``status == "success"``); ``duration_s``
    the seconds spent packing, hashing and writing; ``error`` the
    exception's ``repr`` when ``status == "failed"``.
    """

    status: Status
    path: str
    size: int = 0
    checksum: str = ""
    duration_s: float = 0.0
    error: str | None = None

    @property
    def filepath(self) -> str:
        """The specification's name of ``path``."""
        return self.path

    @property
    def filesize_bytes(self) -> int:
        """The specification's name of ``size``."""
        return self.size

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (admin socket, logs)."""
        return asdict(self)


def save_snapshot(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    *,
    record_bytes: int = DEFAULT_RECORD_BYTES,
) -> SnapshotResult:
    """Stream ``payload`` (from ``build_payload``) into ``path`` atomically.

    Records are packed, hashed and written one at a time (temp file, fsync,
    rename, fsync of the directory). Raises the ``OSError`` of a failed
    write; the previous file at ``path`` then remains intact.
    """
    start = time.perf_counter()
    encoder = SnapshotEncoder(payload, record_bytes=record_bytes)
    size = atomic_write(path, encoder)
    return SnapshotResult(
        status="success",
        path=os.fspath(path),
        size=size,
        checksum=encoder.checksum,
        duration_s=time.perf_counter() - start,
    )


def load_snapshot(
    path: str | os.PathLike[str],
    expected_schema: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Verified payload of the snapshot at ``path`` (see ``codec``).

    A format-2 file is verified one record at a time; its ``assets`` stay in
    the file until ``restore_assets`` reads them (reopening ``path`` and
    checking that it still has the verified checksum). A format-1 file is
    read whole within ``limits.legacy_max_bytes``.
    """
    source = os.fspath(path)
    # stat before open: opening a FIFO would block.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{source}: not a regular file")
    absolute = os.path.abspath(source)

    def opener() -> BinaryIO:
        return open(absolute, "rb")

    with opener() as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise SnapshotEmptyError(f"{source}: snapshot file is empty (0 bytes)")
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise SnapshotTooLargeError(
                f"{source}: snapshot of {size} bytes exceeds the limit of {limits.max_bytes} bytes"
            )
        if is_container(fh.read(1)):
            fh.seek(0)
            return read_container(fh, opener, expected_schema, limits=limits, source=source)
    data = read_bounded(path, legacy_bound(limits))
    return unpack_legacy(data, expected_schema, limits=limits, source=source)
