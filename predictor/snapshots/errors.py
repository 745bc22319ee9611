"""Errors of the snapshot layer, one class per way a snapshot is refused.

Damage to the bytes (empty, truncated, checksum mismatch) is an
``IntegrityError``: the file must not be loaded. A file whose checksum is
valid but whose content does not fit (schema version, state layout, payload
structure) is a ``ValueError``: it is intact but not for this program.
"""

from __future__ import annotations

from predictor.errors import IntegrityError, PredictorError


class SnapshotEmptyError(IntegrityError):
    """The snapshot file holds no bytes at all."""


class SnapshotTruncatedError(IntegrityError):
    """The file ends before its msgpack payload or its 64-byte SHA-256 trailer."""


class SnapshotTooLargeError(PredictorError, ValueError):
    """The file exceeds the configured size bound; it was not read."""


class SchemaVersionError(PredictorError, ValueError):
    """The snapshot was written under another ``schema_version``."""

    def __init__(self, found: object, expected: str, source: str = "snapshot") -> None:
        self.found = found
        self.expected = expected
        super().__init__(
            f"{source}: schema version mismatch: snapshot={found!r}, current={expected!r}"
        )


class MalformedSnapshotError(PredictorError, ValueError):
    """The checksum verifies but the payload is not a well-formed snapshot."""


class LayoutMismatchError(PredictorError, ValueError):
    """The stored state does not fit the state layout of the current config.

    ``path`` names the offending node, e.g. ``kernels.B.params[0].w``.
    """

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        self.path = path
        self.reason = reason
        self.hint = hint
        message = f"snapshot state incompatible with the current config at {path}: {reason}"
        super().__init__(message + (f" ({hint})" if hint else ""))


class NoSnapshotError(PredictorError, FileNotFoundError):
    """No snapshot in a directory verifies (``load_latest``)."""
