"""Snapshot file container (format version 2): a stream of hashed records.

All integers are little-endian::

    file     := preamble record+ trailer
    preamble := magic b"\\xc1PSNAP\\r\\n" (8) | version u32 (= 2) | crc32(magic | version) u32
    record   := header | payload (length bytes) | digest (32 bytes)
    header   := kind u8 | 0 u8 | 0 u16 | number u32 | length u64 | crc32(first 16 bytes) u32
    digest   := SHA-256(previous digest | header | payload); the previous digest
                of record 0 is SHA-256(preamble)
    trailer  := the last record's digest as 64 lowercase hex characters

Records are numbered from 0 in file order and the last one is of kind END,
so every digest covers every byte before it: a file verifies only if it is
complete, in order and unmodified. The trailer is the file's checksum (the
same 64 hex characters at the end as in the legacy format). The first byte,
0xC1, is never used by msgpack, which tells a version-2 file from a legacy
one (one msgpack body followed by its hex SHA-256).

A reader holds one record at a time: the memory a load needs is bounded by
``max_record_bytes``, whatever the file's size. Refusals: a bad preamble or
record header CRC, a digest or trailer that does not match, a record out of
sequence, or bytes after the trailer raise ``IntegrityError`` ("checksum
mismatch" in the message for a hash or CRC); a file that ends early raises
``SnapshotTruncatedError``; a record above the bound raises
``SnapshotTooLargeError`` (before it is read).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from predictor.errors import IntegrityError
from predictor.snapshots.errors import (
    MalformedSnapshotError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
)

MAGIC = b"\xc1PSNAP\r\n"
FORMAT_VERSION = 2
_PRE = struct.Struct("<8sI")
_HEAD = struct.Struct("<BBHIQ")
_CRC = struct.Struct("<I")
PREAMBLE = _PRE.pack(MAGIC, FORMAT_VERSION) + _CRC.pack(
    zlib.crc32(_PRE.pack(MAGIC, FORMAT_VERSION))
)
PREAMBLE_LEN = len(PREAMBLE)
HEADER_LEN = _HEAD.size + _CRC.size
DIGEST_LEN = 32
TRAILER_LEN = 64

KIND_META = 1
KIND_INDEX = 2
KIND_DATA = 3
KIND_END = 4
KINDS = {KIND_META: "meta", KIND_INDEX: "index", KIND_DATA: "data", KIND_END: "end"}

Chunk = bytes | memoryview


def is_container(first_bytes: bytes) -> bool:
    """Whether a file starting with these bytes is a version-2 snapshot."""
    return first_bytes[:1] == MAGIC[:1]


class RecordWriter:
    """Frames payloads into records; the caller writes the chunks it returns."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(PREAMBLE).digest()
        self._number = 0
        self.ended = False

    @staticmethod
    def preamble() -> bytes:
        """The file's first bytes."""
        return PREAMBLE

    def record(self, kind: int, parts: Sequence[Chunk]) -> list[Chunk]:
        """Chunks of one record whose payload is the concatenation of ``parts``."""
        if self.ended:
            raise RuntimeError("no record may follow the END record")
        views = [memoryview(p).cast("B") for p in parts]
        length = sum(len(v) for v in views)
        head = _HEAD.pack(kind, 0, 0, self._number, length)
        header = head + _CRC.pack(zlib.crc32(head))
        h = hashlib.sha256(self._digest)
        h.update(header)
        for v in views:
            h.update(v)
        self._digest = h.digest()
        self._number += 1
        self.ended = kind == KIND_END
        return [header, *views, self._digest]

    def trailer(self) -> bytes:
        """The hex checksum closing the file (after the END record)."""
        if not self.ended:
            raise RuntimeError("the trailer follows the END record")
        return self._digest.hex().encode("ascii")


@dataclass(frozen=True)
class Position:
    """Where a reader stands: byte offset, chain digest and next record number."""

    offset: int
    digest: bytes
    number: int


class RecordReader:
    """Verified records of a version-2 file, one at a time.

    ``start`` resumes at a ``Position`` taken by an earlier reader of the same
    bytes (the digest chain continues from there); otherwise the preamble is
    read and checked first.
    """

    def __init__(
        self,
        fh: BinaryIO,
        *,
        source: str,
        max_record_bytes: int,
        start: Position | None = None,
    ) -> None:
        self._fh = fh
        self.source = source
        self.max_record_bytes = max_record_bytes
        if start is None:
            self._offset = 0
            self._check_preamble(self._read(PREAMBLE_LEN, "the preamble"))
            self._digest = hashlib.sha256(PREAMBLE).digest()
            self._number = 0
        else:
            fh.seek(start.offset)
            self._offset, self._digest, self._number = start.offset, start.digest, start.number
        self.ended = False

    @property
    def position(self) -> Position:
        """The position before the next record."""
        return Position(self._offset, self._digest, self._number)

    @property
    def checksum(self) -> str:
        """Hex digest of the records read so far (the trailer once ended)."""
        return self._digest.hex()

    def _read(self, n: int, what: str) -> bytes:
        data = self._fh.read(n)
        if len(data) < n:
            raise SnapshotTruncatedError(
                f"{self.source}: snapshot truncated: the file ends inside {what} "
                f"(offset {self._offset + len(data)})"
            )
        self._offset += n
        return data

    def _check_preamble(self, pre: bytes) -> None:
        magic, version = _PRE.unpack_from(pre)
        (crc,) = _CRC.unpack_from(pre, _PRE.size)
        if magic != MAGIC or crc != zlib.crc32(pre[: _PRE.size]):
            raise IntegrityError(
                f"{self.source}: snapshot corrupt: checksum mismatch in the preamble"
            )
        if version != FORMAT_VERSION:
            raise MalformedSnapshotError(
                f"{self.source}: snapshot format version {version} is not supported "
                f"(this program reads versions 1 and {FORMAT_VERSION})"
            )

    def next(self) -> tuple[int, bytes]:
        """``(kind, payload)`` of the next record, verified against its digest."""
        if self.ended:
            raise RuntimeError("the END record was already read")
        at = self._offset
        header = self._read(HEADER_LEN, f"the header of record {self._number}")
        kind, _, _, number, length = _HEAD.unpack_from(header)
        (crc,) = _CRC.unpack_from(header, _HEAD.size)
        if crc != zlib.crc32(header[: _HEAD.size]):
            raise IntegrityError(
                f"{self.source}: snapshot corrupt: checksum mismatch in the header of "
                f"record {self._number} (offset {at})"
            )
        if number != self._number or kind not in KINDS:
            raise IntegrityError(
                f"{self.source}: snapshot corrupt: record {number} of kind {kind} at offset "
                f"{at}, expected record {self._number}"
            )
        if length > self.max_record_bytes:
            raise SnapshotTooLargeError(
                f"{self.source}: record {number} of {length} bytes exceeds the limit of "
                f"{self.max_record_bytes} bytes per record"
            )
        payload = self._read(length, f"record {number} ({KINDS[kind]})")
        stored = self._read(DIGEST_LEN, f"the digest of record {number}")
        h = hashlib.sha256(self._digest)
        h.update(header)
        h.update(payload)
        computed = h.digest()
        if not hmac.compare_digest(stored, computed):
            raise IntegrityError(
                f"{self.source}: snapshot corrupt: checksum mismatch in record {number} "
                f"({KINDS[kind]}, offset {at})"
            )
        self._digest = computed
        self._number += 1
        self.ended = kind == KIND_END
        return kind, payload

    def finish(self) -> str:
        """Check the trailer and the end of the file; return the checksum."""
        trailer = self._read(TRAILER_LEN, "the 64-byte checksum trailer")
        if not hmac.compare_digest(trailer, self._digest.hex().encode("ascii")):
            raise IntegrityError(
                f"{self.source}: snapshot corrupt: checksum mismatch in the trailer"
            )
        if self._fh.read(1):
            raise IntegrityError(f"{self.source}: snapshot corrupt: data after the trailer")
        return self._digest.hex()


def iter_records(reader: RecordReader) -> Iterator[tuple[int, bytes]]:
    """Records up to and including END."""
    while not reader.ended:
        yield reader.next()
