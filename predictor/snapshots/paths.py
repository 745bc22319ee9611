"""Where an on-demand snapshot may be written.

``resolve_snapshot_path(directory, requested)`` is the target of an admin
``snapshot`` request: an absolute path is the operator's explicit choice and
is kept as it is; a relative path is taken inside the snapshot directory and
must stay there: ``..`` components that climb out, and symbolic links (of
the directory's subdirectories or of the file itself) that lead out, are
refused with ``SnapshotPathError``. The result is what the writer should
open, its parent directory existing and inside the snapshot directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from predictor.errors import PredictorError
from predictor.snapshots.atomic import is_temp_name


class SnapshotPathError(PredictorError, ValueError):
    """A requested snapshot path that is not allowed; the message says why."""


def resolve_snapshot_path(directory: str | os.PathLike[str], requested: str) -> Path:
    """Target file of a snapshot request (see the module docstring)."""
    if not isinstance(requested, str) or not requested or "\0" in requested:
        raise SnapshotPathError("snapshot path must be a non-empty string")
    path = Path(requested)
    if path.is_absolute():
        return path
    base = Path(os.path.realpath(directory))
    lexical = os.path.normpath(requested)
    if lexical in (".", "") or lexical == ".." or lexical.startswith(".." + os.sep):
        raise SnapshotPathError(f"snapshot path {requested!r} leaves the snapshot directory {base}")
    target = base / lexical
    if is_temp_name(target.name):
        raise SnapshotPathError(f"snapshot path {requested!r} looks like a temporary file")
    parent = Path(os.path.realpath(target.parent))
    if parent != base and base not in parent.parents:
        raise SnapshotPathError(
            f"snapshot path {requested!r} leads out of the snapshot directory {base} "
            "through a symbolic link"
        )
    if not parent.is_dir():
        raise SnapshotPathError(f"snapshot path {requested!r}: {parent} is not a directory")
    final = parent / target.name
    if final.is_symlink():
        raise SnapshotPathError(f"snapshot path {requested!r} is a symbolic link")
    if final.is_dir():
        raise SnapshotPathError(f"snapshot path {requested!r} is a directory")
    return final
