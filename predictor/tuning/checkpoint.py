"""Study checkpoints: canonical JSON, atomic replacement, SHA-256 sidecar.

A checkpoint is one UTF-8 JSON document (no pickle: loading it cannot run
code) written to a temporary file in the target's directory, fsynced,
renamed over the target (``os.replace``) and followed by a directory fsync;
then the sidecar ``<path>.sha256`` (``sha256sum`` format: ``<hex>  <name>``)
is written the same way. Writers of one path are serialised within the
process, so a checkpoint and its sidecar always come from the same write.
A crash between the two renames leaves a mismatch, which ``read_checkpoint``
reports as ``IntegrityError`` rather than loading a file it cannot vouch for.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from predictor.errors import IntegrityError
from predictor.snapshots.atomic import atomic_write

FORMAT = "predictor.tuning.study"
FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".sha256"
#: Permissions of checkpoints and their sidecars (readable: they hold no secret).
CHECKPOINT_MODE = 0o644

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<path>.sha256``."""
    return Path(os.fspath(path) + SIDECAR_SUFFIX)


def _path_lock(path: Path) -> threading.Lock:
    key = os.path.abspath(path)
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def encode(payload: Mapping[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, finite floats only, exact float round trip)."""
    return (json.dumps(payload, sort_keys=True, allow_nan=False, indent=1) + "\n").encode()


def write_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> str:
    """Write ``payload`` and its sidecar atomically; return the SHA-256 hex digest."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = encode(payload)
    digest = hashlib.sha256(data).hexdigest()
    with _path_lock(target):
        atomic_write(target, (data,), mode=CHECKPOINT_MODE)
        sidecar = f"{digest}  {target.name}\n".encode()
        atomic_write(sidecar_path(target), (sidecar,), mode=CHECKPOINT_MODE)
    return digest


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verified payload of a checkpoint.

    Raises ``FileNotFoundError`` when the checkpoint or its sidecar is
    missing, ``IntegrityError`` when the SHA-256 of the file differs from
    the sidecar's, ``ValueError`` when the verified document is not a
    checkpoint of this format.
    """
    target = Path(path)
    side = sidecar_path(target)
    if not target.exists():
        raise FileNotFoundError(f"checkpoint missing: {target}")
    if not side.exists():
        raise FileNotFoundError(f"hash file missing: {side}")
    with _path_lock(target):
        fields = side.read_text(encoding="utf-8").split()
        data = target.read_bytes()
    expected = fields[0].lower() if fields else ""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"checkpoint corrupted: {target}: SHA-256 {actual} differs from the sidecar's "
            f"{expected or '(empty)'}"
        )
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{target}: not a JSON checkpoint ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{target}: not a {FORMAT} checkpoint")
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{target}: checkpoint version {doc.get('version')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    return doc


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "encode",
    "read_checkpoint",
    "sidecar_path",
    "write_checkpoint",
]
