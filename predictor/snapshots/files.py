"""Synchronous snapshot save and load of one file."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from predictor.snapshots.atomic import atomic_write, read_bounded
from predictor.snapshots.codec import DEFAULT_LIMITS, Limits, pack_parts, unpack

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

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (admin socket, logs)."""
        return asdict(self)


def save_snapshot(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> SnapshotResult:
    """Pack ``payload`` (from ``build_payload``) and write it atomically.

    Raises the ``OSError`` of a failed write; the previous file at ``path``
    then remains intact.
    """
    start = time.perf_counter()
    body, trailer = pack_parts(payload)
    size = atomic_write(path, (body, trailer))
    return SnapshotResult(
        status="success",
        path=os.fspath(path),
        size=size,
        checksum=trailer.decode("ascii"),
        duration_s=time.perf_counter() - start,
    )


def load_snapshot(
    path: str | os.PathLike[str],
    expected_schema: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Verified payload of the snapshot at ``path`` (see ``codec.unpack``).

    The file size is checked against ``limits.max_bytes`` before the file
    is read.
    """
    data = read_bounded(path, limits.max_bytes)
    return unpack(data, expected_schema, limits=limits, source=os.fspath(path))
