"""Crash-safe file replacement and bounded reads.

``atomic_write`` writes into a temporary file in the target's directory,
fsyncs it, renames it over the target (``os.replace``, atomic on POSIX)
and fsyncs the directory so the rename itself is durable. A crash at any
moment leaves either the old file or the complete new one under the
target's name, plus possibly a stale temporary file. Temporary names start
with a dot and end in ``.tmp`` (``is_temp_name``): no snapshot pattern
ever matches them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from predictor.snapshots.errors import SnapshotTooLargeError

TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of ``atomic_write``'s temporary files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the directory entry changes (create, rename, unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunk: bytes | memoryview) -> int:
    view = memoryview(chunk).cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


def atomic_write(
    path: str | os.PathLike[str],
    chunks: Iterable[bytes | memoryview],
    *,
    mode: int = 0o600,
) -> int:
    """Write ``chunks`` to ``path`` atomically and durably; return the byte count.

    Raw ``os.write`` calls: there is no user-space buffer, so the data is
    in the kernel once written and ``fsync`` makes it durable. On any error
    the temporary file is removed and the previous ``path`` is untouched.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=directory)
    try:
        try:
            size = sum(_write_all(fd, chunk) for chunk in chunks)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
    return size


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """Whole content of a regular file, refusing one above ``max_bytes``.

    The size is checked on the open descriptor before reading, and the
    read itself stops after ``max_bytes + 1`` bytes (a file that grows
    meanwhile is refused too).
    """
    # stat before open: opening a FIFO would block.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path}: not a regular file")
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_size > max_bytes:
            raise SnapshotTooLargeError(
                f"{path}: snapshot of {st.st_size} bytes exceeds the limit of {max_bytes} bytes"
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SnapshotTooLargeError(f"{path}: snapshot grew beyond the limit of {max_bytes} bytes")
    return data
