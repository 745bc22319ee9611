"""The assets section of a version-2 snapshot: occupied rows only, in bounded records.

Write side (``host_assets``): the rows of the ``n`` live assets are copied
from the stacked state (leading axis = slot) into ``n``-row host arrays, one
per leaf; free slots are not copied and not written. In the file
(``container``) the section is::

    META   "assets": {"capacity": C, "count": n, "rows_per_record": r,
                      "row_bytes": b, "index_records": k, "data_records": m,
                      "leaves": [{"path", "dtype", "shape" (one asset's), "impl"}]}
    INDEX  (k records) msgpack {"start": i, "ids": [str], "slots": int64 LE bytes,
                                "seq": int64 LE bytes, "last_ts_ns": int64 LE bytes}
    DATA   (m records) start u64 | count u64 | for each leaf in META order:
                       its rows start .. start+count-1, C order, little-endian

so the file grows with ``n * b`` (plus the ids), not with ``C``.

Read side (``AssetsReader``): while the loader verifies the file it decodes
the index (ids and counters, 24 bytes per asset plus the names) and checks
the data records' framing without decoding them; the payload's ``assets``
is then a ``StreamedAssets`` mapping. ``StreamedAssets.restore(template)``
re-reads only the data records (resuming the digest chain where they start),
verifies each again and copies its rows into arrays of ``C`` rows
preallocated from the template, whose value the free slots keep. Peak
memory: the restored arrays plus one record.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack
import numpy as np

from predictor.errors import IntegrityError
from predictor.snapshots.assets import AssetBatch, _check_metadata
from predictor.snapshots.container import (
    KIND_DATA,
    KIND_END,
    KIND_INDEX,
    Chunk,
    Position,
    RecordReader,
)
from predictor.snapshots.errors import LayoutMismatchError, MalformedSnapshotError
from predictor.snapshots.leaves import (
    LeafSpec,
    host_array,
    leaf_data,
    rebuild,
    spec_of,
    template_specs,
    walk,
)
from predictor.snapshots.tree import ALLOWED_DTYPES, MAX_NDIM

DATA_HEAD = struct.Struct("<QQ")
#: Target payload of one index or data record (bytes).
DEFAULT_RECORD_BYTES = 8 << 20
_I64 = np.dtype("<i8")
_HEADER_KEYS = frozenset(
    {"capacity", "count", "rows_per_record", "row_bytes", "index_records", "data_records", "leaves"}
)
_INDEX_KEYS = frozenset({"start", "ids", "slots", "seq", "last_ts_ns"})


@dataclass(frozen=True, eq=False)
class HostAssets:
    """Private host copy of the live assets' rows (see the module docstring)."""

    ids: tuple[str, ...]
    slots: np.ndarray[Any, np.dtype[np.int64]]
    seq: np.ndarray[Any, np.dtype[np.int64]]
    last_ts_ns: np.ndarray[Any, np.dtype[np.int64]]
    capacity: int
    specs: tuple[LeafSpec, ...]
    data: tuple[np.ndarray[Any, Any], ...]

    @property
    def row_bytes(self) -> int:
        """Bytes of one asset's state."""
        return sum(s.row_bytes for s in self.specs)

    def header(self, record_bytes: int) -> dict[str, Any]:
        """The META record's ``assets`` map for records of about ``record_bytes``."""
        n, rows = len(self.ids), self._rows_per_record(record_bytes)
        return {
            "capacity": self.capacity,
            "count": n,
            "rows_per_record": rows,
            "row_bytes": self.row_bytes,
            "index_records": len(self._index_bounds(record_bytes)),
            "data_records": math.ceil(n / rows),
            "leaves": [s.to_wire() for s in self.specs],
        }

    def _rows_per_record(self, record_bytes: int) -> int:
        return max(1, record_bytes // max(1, self.row_bytes))

    def _index_bounds(self, record_bytes: int) -> list[tuple[int, int]]:
        bounds, start, size = [], 0, 0
        for i, asset in enumerate(self.ids):
            size += len(asset.encode("utf-8")) + 40
            if size >= record_bytes:
                bounds.append((start, i + 1))
                start, size = i + 1, 0
        if start < len(self.ids):
            bounds.append((start, len(self.ids)))
        return bounds

    def records(self, record_bytes: int) -> Iterator[tuple[int, list[Chunk]]]:
        """``(kind, payload parts)`` of the INDEX then DATA records; no row is copied."""
        for a, b in self._index_bounds(record_bytes):
            index = {
                "start": a,
                "ids": list(self.ids[a:b]),
                "slots": self.slots[a:b].astype(_I64).tobytes(),
                "seq": self.seq[a:b].astype(_I64).tobytes(),
                "last_ts_ns": self.last_ts_ns[a:b].astype(_I64).tobytes(),
            }
            body = msgpack.packb(index, use_bin_type=True)
            assert isinstance(body, bytes)
            yield KIND_INDEX, [body]
        n, rows = len(self.ids), self._rows_per_record(record_bytes)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            parts: list[Chunk] = [DATA_HEAD.pack(a, b - a)]
            parts += [memoryview(d[a:b].reshape(-1).view(np.uint8)) for d in self.data]  # type: ignore[arg-type]
            yield KIND_DATA, parts


def host_assets(batch: AssetBatch, path: str = "assets") -> HostAssets:
    """Copy the live rows of ``batch`` to the host, leaf by leaf (the consistent cut).

    Runs on the caller's thread. Only one leaf's full column is ever in
    transit (off-CPU devices copy it to the host before the rows are taken).
    """
    n = len(batch.ids)
    contiguous = bool(np.array_equal(batch.slots, np.arange(n)))
    specs, data = [], []
    for p, leaf in walk(batch.state, f"{path}.state"):
        arr, impl = leaf_data(leaf, p)
        spec = spec_of(p, arr, impl, 1)
        host = host_array(arr)
        rows = host[:n] if contiguous else host[batch.slots]
        data.append(np.array(rows, dtype=np.dtype(spec.dtype), order="C", copy=True))
        specs.append(spec)
        del host, rows
    return HostAssets(
        ids=batch.ids,
        slots=batch.slots.copy(),
        seq=batch.seq.copy(),
        last_ts_ns=batch.last_ts_ns.copy(),
        capacity=batch.capacity,
        specs=tuple(specs),
        data=tuple(data),
    )


def _int(value: Any, name: str, path: str, low: int = 0, high: int = 1 << 62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MalformedSnapshotError(
            f"{path}.{name}: {value!r} is not an integer in [{low}, {high}]"
        )
    return value


def _spec(node: Any, path: str) -> LeafSpec:
    if not isinstance(node, dict) or set(node) != {"path", "dtype", "shape", "impl"}:
        raise MalformedSnapshotError(f"{path}.leaves: bad leaf description {node!r:.200}")
    lp, dtype, shape, impl = node["path"], node["dtype"], node["shape"], node["impl"]
    if not isinstance(lp, str) or not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise MalformedSnapshotError(f"{path}.leaves: bad path or dtype in {node!r:.200}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise MalformedSnapshotError(f"{path}.leaves: bad shape in {node!r:.200}")
    dims = tuple(_int(d, "shape", lp, 0, 1 << 40) for d in shape)
    if impl is not None and not isinstance(impl, str):
        raise MalformedSnapshotError(f"{path}.leaves: bad key impl in {node!r:.200}")
    return LeafSpec(lp, dtype, dims, impl)


class AssetsReader:
    """Decodes the index and checks the data framing during verification."""

    def __init__(self, header: Any, *, max_assets: int, path: str = "assets") -> None:
        if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
            keys = sorted(header) if isinstance(header, dict) else type(header).__name__
            raise MalformedSnapshotError(
                f"{path}: expected keys {sorted(_HEADER_KEYS)}, got {keys}"
            )
        self.path = path
        self.capacity = _int(header["capacity"], "capacity", path, 0, 1 << 40)
        self.n = _int(header["count"], "count", path, 0, min(self.capacity, max_assets))
        self.rows = _int(header["rows_per_record"], "rows_per_record", path, 1)
        leaves = header["leaves"]
        if not isinstance(leaves, list):
            raise MalformedSnapshotError(f"{path}.leaves is not a list")
        self.specs = tuple(_spec(x, path) for x in leaves)
        if len({s.path for s in self.specs}) != len(self.specs):
            raise MalformedSnapshotError(f"{path}.leaves: duplicate leaf paths")
        self.row_bytes = sum(s.row_bytes for s in self.specs)
        if header["row_bytes"] != self.row_bytes:
            raise MalformedSnapshotError(f"{path}.row_bytes does not match its leaves")
        self.index_records = _int(header["index_records"], "index_records", path)
        self.data_records = _int(header["data_records"], "data_records", path)
        if self.data_records != math.ceil(self.n / self.rows):
            raise MalformedSnapshotError(f"{path}.data_records does not match count")
        self.ids: list[str] = []
        self.slots = np.zeros(self.n, np.int64)
        self.seq = np.zeros(self.n, np.int64)
        self.last_ts_ns = np.zeros(self.n, np.int64)
        self._indexed = 0
        self._data_seen = 0
        self._data_rows = 0
        self.data_start: Position | None = None

    def index(self, payload: bytes, unpack_kwargs: dict[str, Any]) -> None:
        """Decode one INDEX record."""
        if self._data_seen:
            raise MalformedSnapshotError(f"{self.path}: index record after the data records")
        try:
            node = msgpack.unpackb(payload, **unpack_kwargs)
        except (ValueError, msgpack.UnpackException) as exc:
            raise MalformedSnapshotError(f"{self.path}: index record: {exc}") from exc
        if not isinstance(node, dict) or set(node) != _INDEX_KEYS:
            raise MalformedSnapshotError(f"{self.path}: index record has the wrong keys")
        start = _int(node["start"], "index.start", self.path)
        ids = node["ids"]
        if start != self._indexed or not isinstance(ids, list) or not ids:
            raise MalformedSnapshotError(f"{self.path}: index records out of order")
        m = len(ids)
        if start + m > self.n or not all(isinstance(a, str) for a in ids):
            raise MalformedSnapshotError(f"{self.path}: index record holds bad ids")
        for name in ("slots", "seq", "last_ts_ns"):
            raw = node[name]
            if not isinstance(raw, bytes) or len(raw) != 8 * m:
                raise MalformedSnapshotError(f"{self.path}.{name}: expected int64[{m}]")
            getattr(self, name)[start : start + m] = np.frombuffer(raw, _I64)
        self.ids.extend(ids)
        self._indexed += m

    def data(self, payload: bytes, before: Position) -> None:
        """Check one DATA record's framing (its rows are decoded by ``restore``)."""
        if self._data_seen == 0:
            self.data_start = before
        start, count = _data_head(payload, self.path)
        if start != self._data_rows or count != min(self.rows, self.n - start) or count == 0:
            raise MalformedSnapshotError(f"{self.path}: data record {start}+{count} out of order")
        if len(payload) != DATA_HEAD.size + count * self.row_bytes:
            raise MalformedSnapshotError(f"{self.path}: data record of {len(payload)} bytes")
        self._data_seen += 1
        self._data_rows += count

    def finish(
        self, opener: Callable[[], BinaryIO], checksum: str, source: str, max_record_bytes: int
    ) -> StreamedAssets:
        """The section, once END was reached."""
        if self._indexed != self.n or self._data_rows != self.n:
            raise MalformedSnapshotError(
                f"{self.path}: {self._indexed} ids and {self._data_rows} rows for {self.n} assets"
            )
        try:
            _check_metadata(self.ids, self.slots, self.capacity)
        except ValueError as exc:
            raise MalformedSnapshotError(f"{self.path}: {exc}") from exc
        return StreamedAssets(self, opener, checksum, source, max_record_bytes)


def _data_head(payload: bytes, path: str) -> tuple[int, int]:
    if len(payload) < DATA_HEAD.size:
        raise MalformedSnapshotError(f"{path}: data record too short")
    start, count = DATA_HEAD.unpack_from(payload)
    return int(start), int(count)


class StreamedAssets(Mapping[str, Any]):
    """A verified assets section whose rows stay in the file until ``restore``.

    As a mapping: ``capacity``, ``ids``, ``slots``, ``seq``, ``last_ts_ns``
    and ``leaves`` (the stored leaf descriptions).
    """

    def __init__(
        self,
        meta: AssetsReader,
        opener: Callable[[], BinaryIO],
        checksum: str,
        source: str,
        max_record_bytes: int,
    ) -> None:
        self._meta = meta
        self._opener = opener
        self.checksum = checksum
        self.source = source
        self._max_record_bytes = max_record_bytes
        self._view: dict[str, Any] = {
            "capacity": meta.capacity,
            "ids": list(meta.ids),
            "slots": meta.slots,
            "seq": meta.seq,
            "last_ts_ns": meta.last_ts_ns,
            "leaves": [s.to_wire() for s in meta.specs],
        }

    def __getitem__(self, key: str) -> Any:
        return self._view[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view)

    def __len__(self) -> int:
        return len(self._view)

    def restore(self, template: Any, path: str = "assets", *, host: bool = False) -> AssetBatch:
        """Rows decoded into ``template``'s layout (ONE asset's fresh state).

        With ``host``, array leaves stay numpy arrays instead of being copied
        to the template's device: a caller that places the state itself then
        never holds two copies of it.

        A leaf missing, extra, or of another dtype or shape raises
        ``LayoutMismatchError`` naming its path; a file that changed since it
        was verified raises ``IntegrityError``.
        """
        m = self._meta
        want = template_specs(template, f"{path}.state")
        stored = {s.path: i for i, s in enumerate(m.specs)}
        for w in want:
            i = stored.get(w.path)
            if i is None:
                raise LayoutMismatchError(w.path, "missing from the snapshot")
            s = m.specs[i]
            if s.impl != w.impl:
                raise LayoutMismatchError(w.path, f"PRNG key impl {s.impl!r}, expected {w.impl!r}")
            if s.dtype != w.dtype:
                raise LayoutMismatchError(w.path, f"dtype {s.dtype}, expected {w.dtype}")
            if s.shape != w.shape:
                raise LayoutMismatchError(
                    w.path,
                    f"shape {[m.capacity, *s.shape]}, expected {[m.capacity, *w.shape]}",
                )
        extra = sorted(set(stored) - {w.path for w in want})
        if extra:
            raise LayoutMismatchError(extra[0], "in the snapshot but not in the current state")
        target = {s.path: j for j, s in enumerate(want)}
        order = [target[s.path] for s in m.specs]
        outs = []
        for p, leaf in walk(template, f"{path}.state"):
            arr, _ = leaf_data(leaf, p)
            fresh = host_array(arr)
            out = np.empty((m.capacity, *fresh.shape), fresh.dtype.newbyteorder("<"))
            out[...] = fresh
            outs.append(out)
        self._read_rows(outs, order)
        state = rebuild(template, outs, host=host)
        return AssetBatch(
            ids=tuple(m.ids),
            slots=m.slots.copy(),
            seq=m.seq.copy(),
            last_ts_ns=m.last_ts_ns.copy(),
            state=state,
            capacity=m.capacity,
        )

    def _read_rows(self, outs: list[np.ndarray[Any, Any]], order: list[int]) -> None:
        try:
            self._read_verified_rows(outs, order)
        except IntegrityError as exc:
            raise IntegrityError(
                f"{self.source}: snapshot changed since it was verified: {exc}"
            ) from exc

    def _read_verified_rows(self, outs: list[np.ndarray[Any, Any]], order: list[int]) -> None:
        m = self._meta
        contiguous = bool(np.array_equal(m.slots, np.arange(m.n)))
        with self._opener() as fh:
            if m.data_start is None:  # no live asset: only END remains
                return
            reader = RecordReader(
                fh,
                source=self.source,
                max_record_bytes=self._max_record_bytes,
                start=m.data_start,
            )
            while True:
                kind, payload = reader.next()
                if kind == KIND_END:
                    break
                if kind != KIND_DATA:
                    raise IntegrityError(f"record of kind {kind} among the data records")
                start, count = _data_head(payload, m.path)
                if start + count > m.n or len(payload) != DATA_HEAD.size + count * m.row_bytes:
                    raise IntegrityError(f"data record {start}+{count} out of bounds")
                off = DATA_HEAD.size
                rows = slice(start, start + count) if contiguous else m.slots[start : start + count]
                for spec, j in zip(m.specs, order, strict=True):
                    items = count * int(np.prod(spec.shape, dtype=np.int64))
                    block = np.frombuffer(payload, spec.dtype, items, off)
                    outs[j][rows] = block.reshape((count, *spec.shape))
                    off += count * spec.row_bytes
                del payload
            if reader.finish() != self.checksum:
                raise IntegrityError(f"checksum {reader.checksum}, verified {self.checksum}")
