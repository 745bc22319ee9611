"""Shared-memory latest-value table: the last prediction of every asset.

The daemon (one writer) keeps a POSIX shared-memory segment, a file in
``/dev/shm`` of mode 0640, holding one fixed-size record per asset slot. Any
process may read it without a socket and without ever blocking the writer.

Layout (little-endian header, native-endian lock words; x86-64 and aarch64
are both little-endian)::

    header, 64 bytes:
      0  magic "PRDLATV1"      8  version u16     10 header size u16
      12 record size u32       16 capacity u32    20 state u32 (1 live, 2 retired)
      24 generation u64        32 slots used u32  36 writer pid u32
      40 created (Unix ns) u64 48 heartbeat u64 (CLOCK_MONOTONIC ns, 0: none)
      56 writer start time u64 (clock ticks after boot, ``/proc/<pid>/stat``)
    record i at 64 + i * 256:
      0  lock sequence u64 (even: stable, odd: being written)
      8  crc32 of the payload u32, 12 zero u32
      16 payload (``PAYLOAD``): seq, ts, latency_ns, written_ns, predicted_next,
         predicted_value, interval_lower, interval_upper, holder_exponent,
         cusum_drift, kurtosis, weights[4], mode code, flag bits, asset id
         length, asset id (64 bytes, UTF-8, zero padded)

Sequence lock: the writer makes the lock word odd, writes the checksum and
payload, then makes it even (s -> s+1 -> s+2). A reader copies the record
between two reads of the lock word and keeps the copy only if both reads are
equal and even; the lock word is an aligned 8-byte store and load (a
``memoryview`` cast to ``Q``), and x86-64 keeps stores and loads in program
order. The crc32 over the payload is a second, independent guard: a copy
whose checksum fails is retried like a torn one (``checksum_failures``
counts them; on a correct seqlock it stays 0).

Growth: when the daemon's asset table outgrows the segment, the writer builds
a larger segment under a hidden temporary name, copies the records, renames
it over the public name (atomic) and then marks the old segment *retired*.
A reader checks the state word on every access and re-attaches by name when
it sees *retired*; ``generation`` counts the replacements. A writer starting
over an existing segment (restart after a crash) replaces it the same way.

Writer liveness: the writer refreshes the heartbeat on every record it
writes and on ``heartbeat()`` (the daemon calls it from its loop). A crashed
writer leaves its segment marked live; ``LatestReader.writer_status()`` tells
it apart: the writer's pid must name a running, non-zombie process with the
recorded start time (so a reused pid does not count), and the heartbeat must
be younger than ``max_age_s``. A reader in another pid namespace passes
``check_pid=False`` and relies on the heartbeat alone. Segments of writers
that predate the heartbeat (0) are judged by the pid alone.

Readers attach with ``os.open`` + ``mmap`` (read-only), not through
``multiprocessing.shared_memory``, whose resource tracker would unlink a
segment it did not create when the reading process exits.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from predictor.ipc.liveness import WriterStatus, process_alive, process_start_ticks
from predictor.ipc.wire import ASSET_ID_MAX_BYTES

SHM_DIR = Path("/dev/shm")
SEGMENT_MODE = 0o640

MAGIC = b"PRDLATV1"
VERSION = 1
HEADER_SIZE = 64
RECORD_SIZE = 256

STATE_LIVE = 1
STATE_RETIRED = 2

#: Mode names in code order (the same order as ``predictor.core.types.MODES``;
#: duplicated so that readers need no JAX).
MODES = ("Standard", "Robust", "Emergency")
MODE_UNKNOWN = 255

#: Flag bits of a record, named after the PredictionResult booleans.
FLAG_BITS: dict[str, int] = {
    "sinkhorn_converged": 1 << 0,
    "degraded_inference_mode": 1 << 1,
    "emergency_mode": 1 << 2,
    "regime_change_detected": 1 << 3,
    "mode_collapse_warning": 1 << 4,
    "warming_up": 1 << 5,
}

HEADER = struct.Struct("<8sHHIIIQIIQQQ")
_STATE_OFF = 20
_USED_OFF = 32
_PID_OFF = 36
_HEARTBEAT_OFF = 48
_START_OFF = 56
_U64 = struct.Struct("<Q")
#: Heartbeat age (s) beyond which ``writer_status`` calls the writer stale.
DEFAULT_MAX_AGE_S = 10.0
PAYLOAD = struct.Struct(f"<Qqqq11dBBH{ASSET_ID_MAX_BYTES}s")
PAYLOAD_OFF = 16
_CRC = struct.Struct("<I")
_U32 = struct.Struct("<I")
_LOCK = struct.Struct("Q")  # native, like the memoryview the writer stores through

FIELDS = (
    "seq",
    "ts",
    "latency_ns",
    "written_ns",
    "predicted_next",
    "predicted_value",
    "interval_lower",
    "interval_upper",
    "holder_exponent",
    "cusum_drift",
    "kurtosis",
)

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")

assert PAYLOAD_OFF + PAYLOAD.size <= RECORD_SIZE
#: Payload of a cleared record: asset id length 0 (``unpack_record`` -> None).
EMPTY_PAYLOAD = bytes(PAYLOAD.size)
assert HEADER.size == HEADER_SIZE


class ShmReadError(RuntimeError):
    """No consistent copy of a record within the retry budget.

    Either the writer died in the middle of a write (the lock word stays
    odd) or the record is corrupted (the checksum never matches).
    """


def segment_path(name: str, directory: str | os.PathLike[str] = SHM_DIR) -> Path:
    """File of the segment ``name`` (a POSIX shm name; a leading ``/`` is allowed)."""
    bare = name[1:] if name.startswith("/") else name
    if not _NAME_RE.fullmatch(bare):
        raise ValueError(f"invalid shared-memory name {name!r}: [A-Za-z0-9_.-], 1-200 chars")
    return Path(directory) / bare


def payload_checksum(record: bytes | bytearray | memoryview) -> int:
    """crc32 of a record's payload bytes (what the checksum field must equal)."""
    return zlib.crc32(record[PAYLOAD_OFF : PAYLOAD_OFF + PAYLOAD.size])


def stored_checksum(record: bytes | bytearray | memoryview) -> int:
    """The checksum field of a record."""
    return int(_CRC.unpack_from(record, 8)[0])


def unpack_record(record: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    """Fields of one record copy, or ``None`` for a never-written slot."""
    vals = PAYLOAD.unpack_from(record, PAYLOAD_OFF)
    alen = vals[-2]
    if alen == 0:
        return None
    out: dict[str, Any] = dict(zip(FIELDS, vals[:11], strict=True))
    out["weights"] = list(vals[11:15])
    code = vals[15]
    out["mode"] = MODES[code] if code < len(MODES) else "unknown"
    flags = vals[16]
    out["flags"] = flags
    for key, bit in FLAG_BITS.items():
        out[key] = bool(flags & bit)
    out["asset"] = vals[-1][:alen].decode("utf-8", errors="replace")
    out["checksum"] = stored_checksum(record)
    return out


def _mode_code(mode: str | int) -> int:
    if isinstance(mode, int):
        return mode if 0 <= mode < len(MODES) else MODE_UNKNOWN
    try:
        return MODES.index(mode)
    except ValueError:
        return MODE_UNKNOWN


def _segment_size(capacity: int) -> int:
    return HEADER_SIZE + capacity * RECORD_SIZE


class LatestWriter:
    """The daemon's side: creates the segment and writes records.

    ``capacity`` is the initial number of slots; ``write`` to a slot beyond it
    grows the segment (at least doubling it, see the module docstring), so
    the daemon may pre-size from its asset table's capacity or let it grow.
    Not thread-safe: one writer thread.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        directory: str | os.PathLike[str] = SHM_DIR,
        mode: int = SEGMENT_MODE,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.name = name
        self.path = segment_path(name, directory)
        self._mode = mode
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self._q: memoryview | None = None
        self._capacity = 0
        self._used = 0
        self._generation = 0
        previous = self._retire_existing()
        self._install(capacity, previous + 1, copy_from=None)

    # --- properties --------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Number of slots of the current segment."""
        return self._capacity

    @property
    def generation(self) -> int:
        """Replacement counter (1 for the first segment under this name)."""
        return self._generation

    @property
    def used(self) -> int:
        """One past the highest slot written."""
        return self._used

    # --- writing -----------------------------------------------------------
    def write(
        self,
        slot: int,
        asset: str,
        *,
        seq: int,
        ts: int,
        predicted_next: float,
        predicted_value: float,
        interval_lower: float,
        interval_upper: float,
        holder_exponent: float,
        cusum_drift: float,
        kurtosis: float,
        weights: Sequence[float],
        mode: str | int,
        flags: int = 0,
        latency_ns: int = 0,
        written_ns: int | None = None,
    ) -> None:
        """Publish the latest record of ``asset`` in ``slot`` (seqlock-guarded).

        ``seq`` is the asset's prediction sequence number, ``ts`` the tick's
        Unix ns, ``latency_ns`` receipt-to-result time, ``written_ns`` the
        Unix ns of this write (default: now). Grows the segment when
        ``slot >= capacity``.
        """
        raw_id = self._check_slot(slot, asset)
        w0, w1, w2, w3 = weights
        payload = PAYLOAD.pack(
            seq,
            ts,
            latency_ns,
            time.time_ns() if written_ns is None else written_ns,
            predicted_next,
            predicted_value,
            interval_lower,
            interval_upper,
            holder_exponent,
            cusum_drift,
            kurtosis,
            w0,
            w1,
            w2,
            w3,
            _mode_code(mode),
            flags,
            len(raw_id),
            raw_id,
        )
        self._store(slot, payload)

    def write_result(
        self,
        slot: int,
        asset: str,
        *,
        seq: int,
        ts: int,
        latency_ns: int,
        result: Mapping[str, Any],
    ) -> None:
        """``write`` from a ``PredictionResult.to_dict()`` mapping."""
        raw_id = self._check_slot(slot, asset)
        flags = 0
        for key, bit in FLAG_BITS.items():
            if result.get(key, False):
                flags |= bit
        w0, w1, w2, w3 = result["weights"]
        payload = PAYLOAD.pack(
            seq,
            ts,
            latency_ns,
            time.time_ns(),
            result["predicted_next"],
            result["predicted_value"],
            result["interval_lower"],
            result["interval_upper"],
            result["holder_exponent"],
            result["cusum_drift"],
            result["kurtosis"],
            w0,
            w1,
            w2,
            w3,
            _mode_code(result["mode"]),
            flags,
            len(raw_id),
            raw_id,
        )
        self._store(slot, payload)

    def heartbeat(self, now_ns: int | None = None) -> None:
        """Tell readers the writer is alive (``time.monotonic_ns()`` by default)."""
        if self._mm is not None:
            _U64.pack_into(
                self._mm, _HEARTBEAT_OFF, time.monotonic_ns() if now_ns is None else now_ns
            )

    def ensure_capacity(self, n_slots: int) -> bool:
        """Make room for ``n_slots`` slots; True if the segment was replaced.

        The new capacity is ``max(n_slots, 2 * capacity)``, so n assets cause
        O(log n) replacements. Records are copied; readers re-attach.
        """
        if n_slots <= self._capacity:
            return False
        self._install(max(n_slots, 2 * self._capacity), self._generation + 1, copy_from=self._mm)
        return True

    # --- lifecycle -----------------------------------------------------------
    def close(self, unlink: bool = True) -> None:
        """Mark the segment retired, unmap it and (by default) unlink its name.

        The name is unlinked only if it still refers to this writer's segment.
        """
        if self._mm is None:
            return
        _U32.pack_into(self._mm, _STATE_OFF, STATE_RETIRED)
        if unlink:
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._unmap()

    def __enter__(self) -> LatestWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -----------------------------------------------------------
    def _check_slot(self, slot: int, asset: str) -> bytes:
        """UTF-8 asset id after checks; grows the segment for a slot beyond capacity."""
        if slot < 0:
            raise IndexError(f"slot {slot} < 0")
        raw_id = asset.encode("utf-8")
        if not 0 < len(raw_id) <= ASSET_ID_MAX_BYTES:
            raise ValueError(f"asset id must be 1..{ASSET_ID_MAX_BYTES} UTF-8 bytes")
        if slot >= self._capacity:
            self.ensure_capacity(slot + 1)
        return raw_id

    def payload_of(self, slot: int) -> bytes | None:
        """The payload of record ``slot``, or None if it was never written.

        The writer is the segment's only writer, so its own copy cannot be torn.
        """
        mm = self._mm
        if mm is None or slot >= self._capacity:
            return None
        off = HEADER_SIZE + slot * RECORD_SIZE
        if mm[off : off + 8] == bytes(8):
            return None
        return bytes(mm[off + PAYLOAD_OFF : off + PAYLOAD_OFF + PAYLOAD.size])

    def clear(self, slot: int) -> None:
        """Mark record ``slot`` empty (readers then see no record there)."""
        if self.payload_of(slot) is not None:
            self._store(slot, EMPTY_PAYLOAD)

    def move(self, src: int, dst: int) -> None:
        """Copy record ``src`` to slot ``dst``, then clear ``src``.

        In this order a reader finds the moved asset at every moment.
        """
        payload = self.payload_of(src)
        if payload is None:
            self.clear(dst)
            return
        self._store(dst, payload)
        self._store(src, EMPTY_PAYLOAD)

    def _store(self, slot: int, payload: bytes) -> None:
        """Seqlock write: lock odd, checksum + payload, lock even."""
        crc = zlib.crc32(payload)
        mm, q = self._mm, self._q
        assert mm is not None and q is not None
        off = HEADER_SIZE + slot * RECORD_SIZE
        word = off >> 3
        lock = q[word]
        q[word] = lock + 1
        _CRC.pack_into(mm, off + 8, crc)
        mm[off + PAYLOAD_OFF : off + PAYLOAD_OFF + PAYLOAD.size] = payload
        q[word] = lock + 2
        _U64.pack_into(mm, _HEARTBEAT_OFF, time.monotonic_ns())
        if slot >= self._used:
            # Published after the record so that a reader scanning up to
            # ``used`` finds it complete.
            self._used = slot + 1
            _U32.pack_into(mm, _USED_OFF, self._used)

    def _retire_existing(self) -> int:
        """Mark a segment left under our name retired; return its generation (0 if none)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        except PermissionError:
            return 0
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                return 0
            with mmap.mmap(fd, HEADER_SIZE) as mm:
                head = HEADER.unpack_from(mm, 0)
                if head[0] != MAGIC:
                    return 0
                _U32.pack_into(mm, _STATE_OFF, STATE_RETIRED)
                return int(head[6])
        finally:
            os.close(fd)

    def _install(self, capacity: int, generation: int, copy_from: mmap.mmap | None) -> None:
        """Build a segment of ``capacity`` slots, publish it, retire the current one."""
        size = _segment_size(capacity)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{generation}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self._mode)
        mm: mmap.mmap | None = None
        used = self._used if copy_from is not None else 0
        try:
            os.fchmod(fd, self._mode)  # the umask must not widen or narrow the mode
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
            if copy_from is not None:
                n = len(copy_from) - HEADER_SIZE
                mm[HEADER_SIZE : HEADER_SIZE + n] = copy_from[HEADER_SIZE:]
            HEADER.pack_into(
                mm,
                0,
                MAGIC,
                VERSION,
                HEADER_SIZE,
                RECORD_SIZE,
                capacity,
                STATE_LIVE,
                generation,
                used,
                os.getpid() & 0xFFFFFFFF,
                time.time_ns(),
                time.monotonic_ns(),
                process_start_ticks(os.getpid()) or 0,
            )
            os.rename(tmp, self.path)
        except BaseException:
            if mm is not None:
                mm.close()
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        if self._mm is not None:
            _U32.pack_into(self._mm, _STATE_OFF, STATE_RETIRED)
            self._unmap()
        self._fd, self._mm = fd, mm
        self._q = memoryview(mm).cast("Q")
        self._capacity, self._generation, self._used = capacity, generation, used

    def _unmap(self) -> None:
        if self._q is not None:
            self._q.release()
            self._q = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LatestReader:
    """Read-only view of a writer's segment, from any process.

    ``get(asset)`` returns the latest record of ``asset`` as a dict (keys:
    ``asset``, ``slot``, ``generation``, ``seq``, ``ts``, ``latency_ns``,
    ``written_ns``, the prediction fields, ``weights``, ``mode``, ``flags``,
    one bool per ``FLAG_BITS`` name, ``checksum``), or ``None`` if the asset
    has no record or the segment is gone. Raises ``FileNotFoundError`` at
    construction if no segment exists, ``ValueError`` if the file is not one.
    One reader object per thread (it caches an index and counters).
    """

    def __init__(
        self,
        name: str,
        *,
        directory: str | os.PathLike[str] = SHM_DIR,
        max_retries: int = 100_000,
    ) -> None:
        self.name = name
        self.path = segment_path(name, directory)
        self.max_retries = max_retries
        #: Copies refused by the checksum although the lock words agreed.
        self.checksum_failures = 0
        #: Copies refused by the sequence lock (writer active or lock moved).
        self.lock_retries = 0
        self._mm: mmap.mmap | None = None
        self._q: memoryview | None = None
        self._capacity = 0
        self._generation = 0
        self._index: dict[str, int] = {}
        self._scanned_used = -1
        self._attach()

    @property
    def capacity(self) -> int:
        """Slots of the attached segment."""
        return self._capacity

    @property
    def generation(self) -> int:
        """Generation of the attached segment."""
        return self._generation

    def writer_status(
        self, max_age_s: float = DEFAULT_MAX_AGE_S, *, check_pid: bool = True
    ) -> WriterStatus:
        """Whether the segment's writer is alive and how old its heartbeat is.

        After a writer crash the segment stays marked live and ``get`` keeps
        returning its last records: this is how a reader tells.
        """
        if not self._live():
            return WriterStatus(0, None, None, "retired", False, max_age_s)
        mm = self._mm
        assert mm is not None
        pid = int(_U32.unpack_from(mm, _PID_OFF)[0])
        beat = int(_U64.unpack_from(mm, _HEARTBEAT_OFF)[0])
        start = int(_U64.unpack_from(mm, _START_OFF)[0])
        pid_alive = process_alive(pid, start) if check_pid else None
        age = max(0.0, (time.monotonic_ns() - beat) / 1e9) if beat else None
        alive = pid_alive is not False and (age is None or age <= max_age_s)
        if age is None and not check_pid:
            alive = False  # neither a heartbeat nor a pid check: nothing says alive
        return WriterStatus(pid, pid_alive, age, "live", alive, max_age_s)

    def get(self, asset: str) -> dict[str, Any] | None:
        """Latest record of ``asset`` (see the class docstring)."""
        if not self._live():
            return None
        slot = self._index.get(asset)
        if slot is None:
            # A forgotten asset's slot can be reused below the high-water mark,
            # which a scan limited to new slots would not see: rescan on a miss.
            self._scan(force=True)
            slot = self._index.get(asset)
            if slot is None:
                return None
        rec = self.read_slot(slot)
        if rec is None or rec["asset"] != asset:
            self._scan(force=True)
            slot = self._index.get(asset)
            rec = None if slot is None else self.read_slot(slot)
        return rec if rec is not None and rec["asset"] == asset else None

    def slot_of(self, asset: str) -> int | None:
        """Slot holding ``asset``, if any."""
        if not self._live():
            return None
        if asset not in self._index:
            self._scan()
        return self._index.get(asset)

    def assets(self) -> list[str]:
        """Asset ids with a record, in slot order."""
        if not self._live():
            return []
        self._scan(force=True)
        return sorted(self._index, key=self._index.__getitem__)

    def records(self) -> dict[str, dict[str, Any]]:
        """Latest record of every asset."""
        out: dict[str, dict[str, Any]] = {}
        for asset in self.assets():
            rec = self.get(asset)
            if rec is not None:
                out[asset] = rec
        return out

    def read_slot(self, slot: int) -> dict[str, Any] | None:
        """Checksum-verified record of ``slot`` (``None`` if never written).

        Retries torn copies and copies whose checksum fails; raises
        ``ShmReadError`` after ``max_retries`` attempts.
        """
        for _ in range(self.max_retries):
            raw = self.read_raw(slot)
            if _LOCK.unpack_from(raw, 0)[0] == 0:
                return None  # never written: all zeros, no checksum yet
            if payload_checksum(raw) == stored_checksum(raw):
                rec = unpack_record(raw)
                if rec is not None:
                    rec["slot"] = slot
                    rec["generation"] = self._generation
                return rec
            self.checksum_failures += 1
        raise ShmReadError(f"slot {slot}: checksum never matched in {self.max_retries} copies")

    def read_raw(self, slot: int) -> bytes:
        """A copy of record ``slot`` that the sequence lock says is consistent.

        No checksum check (callers may verify with ``payload_checksum``);
        raises ``ShmReadError`` if no consistent copy is obtained within
        ``max_retries`` attempts, ``IndexError`` for a slot beyond capacity.
        """
        if not 0 <= slot < self._capacity:
            raise IndexError(f"slot {slot} outside [0, {self._capacity})")
        mm, q = self._mm, self._q
        assert mm is not None and q is not None
        off = HEADER_SIZE + slot * RECORD_SIZE
        word = off >> 3
        for attempt in range(self.max_retries):
            before = q[word]
            if not before & 1:
                raw = mm[off : off + RECORD_SIZE]
                if q[word] == before:
                    return raw
            self.lock_retries += 1
            if attempt % 64 == 63:
                # A writer descheduled mid-record on a busy machine needs CPU
                # time to finish it: yield, then back off with short sleeps.
                os.sched_yield() if attempt < 4096 else time.sleep(1e-4)
        raise ShmReadError(f"slot {slot}: no consistent copy in {self.max_retries} attempts")

    def close(self) -> None:
        """Unmap (never unlinks: the segment belongs to the writer)."""
        self._detach()

    def __enter__(self) -> LatestReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -----------------------------------------------------------
    def _live(self) -> bool:
        """Attached to a live segment, re-attaching after a replacement."""
        if self._mm is not None and _U32.unpack_from(self._mm, _STATE_OFF)[0] == STATE_LIVE:
            return True
        try:
            self._attach()
        except (FileNotFoundError, ValueError):
            self._detach()
            return False
        return self._mm is not None and _U32.unpack_from(self._mm, _STATE_OFF)[0] == STATE_LIVE

    def _attach(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError(f"{self.path}: not a latest-value segment (size {size})")
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, hsize, rsize, capacity, _state, generation, *_ = HEADER.unpack_from(mm, 0)
        if (magic, version, hsize, rsize) != (MAGIC, VERSION, HEADER_SIZE, RECORD_SIZE) or (
            size != _segment_size(capacity)
        ):
            mm.close()
            raise ValueError(f"{self.path}: not a version-{VERSION} latest-value segment")
        self._detach()
        self._mm = mm
        self._q = memoryview(mm).cast("Q")
        self._capacity = int(capacity)
        self._generation = int(generation)
        self._index = {}
        self._scanned_used = -1

    def _detach(self) -> None:
        if self._q is not None:
            self._q.release()
            self._q = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._capacity = 0

    def _scan(self, force: bool = False) -> None:
        """Rebuild the asset -> slot index if slots were added since the last scan."""
        assert self._mm is not None
        used = min(int(_U32.unpack_from(self._mm, _USED_OFF)[0]), self._capacity)
        if used == self._scanned_used and not force:
            return
        index: dict[str, int] = {}
        for slot in range(used):
            rec = self.read_slot(slot)
            if rec is not None:
                index[rec["asset"]] = slot
        self._index = index
        self._scanned_used = used
