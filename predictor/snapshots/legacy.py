"""Reading format-1 snapshots: one msgpack body followed by its hex SHA-256.

Files written before the record container (``container``) are read whole,
within ``Limits.legacy_max_bytes``. ``unpack`` checks, in this order:
emptiness, the size bound, the checksum (``IntegrityError`` "checksum
mismatch", or ``SnapshotTruncatedError`` when the bytes end before the
msgpack structure or the trailer), the msgpack decoding under strict limits;
the caller then checks the schema version and the structure.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack

from predictor.errors import IntegrityError
from predictor.snapshots.errors import (
    MalformedSnapshotError,
    SnapshotEmptyError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
)

CHECKSUM_LEN = 64


def _ends_early(data: memoryview, max_bytes: int, unpack_kwargs: dict[str, Any]) -> bool:
    """Whether ``data`` stops before one msgpack object plus a full trailer.

    Only called once the checksum failed, to tell truncation from damage.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=max_bytes, **unpack_kwargs)
    unpacker.feed(data)
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return True
    except (ValueError, msgpack.UnpackException):  # damaged, but not short
        return False
    return bool(len(data) - unpacker.tell() < CHECKSUM_LEN)


def verify(
    data: bytes | memoryview, *, max_bytes: int, unpack_kwargs: dict[str, Any], source: str
) -> memoryview:
    """The checksummed body of a format-1 snapshot's bytes, or the reason it is refused."""
    view = memoryview(data)
    n = len(view)
    if n == 0:
        raise SnapshotEmptyError(f"{source}: snapshot file is empty (0 bytes)")
    if n > max_bytes:
        raise SnapshotTooLargeError(
            f"{source}: snapshot of {n} bytes exceeds the limit of {max_bytes} bytes"
        )
    if n <= CHECKSUM_LEN:
        raise SnapshotTruncatedError(
            f"{source}: snapshot truncated: {n} bytes, not even a payload and a "
            f"{CHECKSUM_LEN}-byte checksum"
        )
    body, stored = view[:-CHECKSUM_LEN], bytes(view[-CHECKSUM_LEN:])
    computed = hashlib.sha256(body).hexdigest().encode("ascii")
    if not hmac.compare_digest(stored, computed):
        if _ends_early(view, max_bytes, unpack_kwargs):
            raise SnapshotTruncatedError(
                f"{source}: snapshot truncated: its {n} bytes end before the msgpack "
                f"payload and its {CHECKSUM_LEN}-byte SHA-256 trailer are complete"
            )
        raise IntegrityError(
            f"{source}: snapshot corrupt: checksum mismatch "
            f"(stored {stored[:16]!r}..., computed {computed[:16].decode()}...)"
        )
    return body


def unpack(
    data: bytes | memoryview, *, max_bytes: int, unpack_kwargs: dict[str, Any], source: str
) -> Any:
    """The decoded (not yet structure-checked) payload of a format-1 snapshot."""
    body = verify(data, max_bytes=max_bytes, unpack_kwargs=unpack_kwargs, source=source)
    try:
        return msgpack.unpackb(body, **unpack_kwargs)
    except (ValueError, msgpack.UnpackException) as exc:
        raise MalformedSnapshotError(
            f"{source}: checksum valid but msgpack invalid: {exc}"
        ) from exc
