"""Snapshot payloads and their files.

The payload is a map::

    {"schema_version": str, "timestamp": int (Unix ns), "config": {...},
     "global": tree, "telemetry": tree, "flags": tree,
     "kernels": {"A": tree, "B": tree, "C": tree, "D": tree},
     "assets": ...}            # optional: the live rows of a stacked state

where each ``tree`` is a pytree encoded by ``tree.encode_tree``. On disk
(format 2, see ``container`` for the framing)::

    preamble | META | INDEX* | DATA* | END | hex SHA-256 trailer

META is the msgpack map above with ``assets`` replaced by its header; the
asset ids and counters go to INDEX records and the live rows to DATA
records of about ``record_bytes`` each (``chunked``). Only occupied slots
are written, so a file grows with the live assets, and there is no size
bound on the file: a load holds one record at a time (``Limits.
max_record_bytes``) besides what it decodes. Format-1 files (one msgpack
body and its hex SHA-256, ``legacy``) are still read, within
``Limits.legacy_max_bytes``.

``unpack`` / ``files.load_snapshot`` check, in this order: emptiness, the
optional whole-file bound, every record's CRC and digest and the trailer
(``IntegrityError`` "checksum mismatch", ``SnapshotTruncatedError``), the
msgpack decoding under strict limits, the schema version
(``SchemaVersionError``, naming both versions), then the payload's
structure. Fitting the state into the current layout is
``restore_sections`` / ``restore_assets``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

from predictor.config import FIELD_SPECS, PredictorConfig
from predictor.snapshots import legacy
from predictor.snapshots.assets import AssetBatch, decode_assets
from predictor.snapshots.chunked import (
    DEFAULT_RECORD_BYTES,
    AssetsReader,
    HostAssets,
    StreamedAssets,
    host_assets,
)
from predictor.snapshots.container import (
    KIND_DATA,
    KIND_END,
    KIND_INDEX,
    KIND_META,
    Chunk,
    RecordReader,
    RecordWriter,
    is_container,
)
from predictor.snapshots.errors import (
    LayoutMismatchError,
    MalformedSnapshotError,
    SchemaVersionError,
    SnapshotEmptyError,
    SnapshotTooLargeError,
)
from predictor.snapshots.tree import decode_tree, encode_tree, to_host

CHECKSUM_LEN = legacy.CHECKSUM_LEN
#: Largest format-1 file read (format-1 files are read whole).
DEFAULT_MAX_BYTES = 1 << 30
#: Largest record of a format-2 file: what a load holds besides its result.
DEFAULT_MAX_RECORD_BYTES = 256 << 20
KERNEL_NAMES = ("A", "B", "C", "D")
TREE_SECTIONS = ("global", "telemetry", "flags", "kernels")
REQUIRED_KEYS = frozenset({"schema_version", "timestamp", "config", *TREE_SECTIONS})
OPTIONAL_KEYS = frozenset({"assets"})


@dataclass(frozen=True)
class Limits:
    """Bounds applied before and while unpacking untrusted bytes.

    ``max_bytes`` bounds the whole file (``None``: no bound; a format-2 file
    is read one record at a time), ``max_record_bytes`` one record of a
    format-2 file, ``legacy_max_bytes`` a format-1 file (read whole); the
    others bound one msgpack string, array or map (``max_array_len`` also
    bounds the number of assets).
    """

    max_bytes: int | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    legacy_max_bytes: int = DEFAULT_MAX_BYTES
    max_str_len: int = 1 << 20
    max_array_len: int = 1 << 24
    max_map_len: int = 1 << 20


DEFAULT_LIMITS = Limits()


def build_payload(
    *,
    config: PredictorConfig | Mapping[str, Any],
    global_state: Any,
    telemetry: Any,
    flags: Any,
    kernels: Mapping[str, Any],
    assets: AssetBatch | None = None,
    schema_version: str | None = None,
    timestamp_ns: int | None = None,
) -> dict[str, Any]:
    """The payload map, with every array copied to the host.

    Runs on the caller's thread: the copy (``to_host``, and ``host_assets``
    for the live rows of ``assets``) is the consistent cut of the state;
    packing, hashing and I/O may then happen elsewhere.
    ``schema_version`` defaults to the config's. ``kernels`` must hold
    exactly the keys A, B, C, D (a value may be ``None``).
    """
    if set(kernels) != set(KERNEL_NAMES):
        raise ValueError(f"kernels must have keys {KERNEL_NAMES}, got {sorted(kernels)}")
    cfg = config.to_dict() if isinstance(config, PredictorConfig) else dict(config)
    version = schema_version if schema_version is not None else cfg.get("schema_version")
    if not isinstance(version, str) or not version:
        raise ValueError("schema_version missing: pass it or use a config that has one")
    host = to_host(
        {
            "global": global_state,
            "telemetry": telemetry,
            "flags": flags,
            "kernels": {k: kernels[k] for k in KERNEL_NAMES},
        }
    )
    payload: dict[str, Any] = {
        "schema_version": version,
        "timestamp": time.time_ns() if timestamp_ns is None else int(timestamp_ns),
        "config": cfg,
    }
    for name in TREE_SECTIONS:
        payload[name] = encode_tree(host[name], name)
    if assets is not None:
        payload["assets"] = host_assets(assets)
    return payload


class SnapshotEncoder:
    """The file's chunks for a payload, streamed; ``checksum`` once exhausted.

    Iterating packs one record at a time: besides the payload's own arrays
    only the META record and one INDEX record are ever built in memory (DATA
    records are views of the host rows). ``record_bytes`` is the target size
    of INDEX and DATA records.
    """

    def __init__(
        self,
        payload: Mapping[str, Any],
        *,
        record_bytes: int = DEFAULT_RECORD_BYTES,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        if not 1 <= record_bytes <= max_record_bytes:
            raise ValueError(f"record_bytes must lie in [1, {max_record_bytes}]")
        self.payload = payload
        self.record_bytes = record_bytes
        self.max_record_bytes = max_record_bytes
        self.checksum = ""

    def __iter__(self) -> Iterator[Chunk]:
        writer = RecordWriter()
        yield writer.preamble()
        meta = {k: v for k, v in self.payload.items() if k != "assets"}
        assets = self.payload.get("assets")
        if isinstance(assets, AssetBatch):
            assets = host_assets(assets)
        if assets is not None and not isinstance(assets, HostAssets):
            raise TypeError(f"assets: expected an AssetBatch, got {type(assets).__name__}")
        if assets is not None:
            if assets.row_bytes + 16 > self.max_record_bytes:
                raise ValueError(f"one asset's state ({assets.row_bytes} bytes) exceeds a record")
            meta["assets"] = assets.header(self.record_bytes)
        body = msgpack.packb(meta, use_bin_type=True)
        assert isinstance(body, bytes)
        if len(body) > self.max_record_bytes:
            raise ValueError(f"snapshot metadata of {len(body)} bytes exceeds a record")
        yield from writer.record(KIND_META, [body])
        records = 1
        if assets is not None:
            for kind, parts in assets.records(self.record_bytes):
                yield from writer.record(kind, parts)
                records += 1
        end = msgpack.packb({"records": records}, use_bin_type=True)
        yield from writer.record(KIND_END, [end])
        trailer = writer.trailer()
        self.checksum = trailer.decode("ascii")
        yield trailer


def pack(payload: Mapping[str, Any], *, record_bytes: int = DEFAULT_RECORD_BYTES) -> bytes:
    """File bytes of ``payload`` (in memory; files are streamed by ``save_snapshot``)."""
    return b"".join(bytes(c) for c in SnapshotEncoder(payload, record_bytes=record_bytes))


def _unpack_kwargs(limits: Limits, max_bin: int) -> dict[str, Any]:
    return {
        "raw": False,
        "strict_map_key": True,
        "use_list": True,
        "max_str_len": limits.max_str_len,
        "max_bin_len": max_bin,
        "max_array_len": limits.max_array_len,
        "max_map_len": limits.max_map_len,
        # No extension types (msgpack timestamps included) in a snapshot.
        "max_ext_len": 0,
    }


def read_container(
    fh: BinaryIO,
    opener: Callable[[], BinaryIO],
    expected_schema: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    source: str = "snapshot",
) -> dict[str, Any]:
    """Verify a format-2 stream record by record; the payload (assets left in the file).

    ``opener`` reopens the same bytes for ``StreamedAssets.restore``.
    """
    reader = RecordReader(fh, source=source, max_record_bytes=limits.max_record_bytes)
    kwargs = _unpack_kwargs(limits, limits.max_record_bytes)
    kind, body = reader.next()
    if kind != KIND_META:
        raise MalformedSnapshotError(f"{source}: the first record is not the metadata")
    meta = _msgpack(body, kwargs, source, "metadata")
    if not isinstance(meta, dict):
        raise MalformedSnapshotError(f"{source}: payload is {type(meta).__name__}, not a map")
    section = None
    if "assets" in meta:
        section = AssetsReader(meta.pop("assets"), max_assets=limits.max_array_len)
    records = 1
    while True:
        before = reader.position
        kind, body = reader.next()
        if kind == KIND_END:
            break
        records += 1
        if section is None or kind == KIND_META:
            raise MalformedSnapshotError(f"{source}: unexpected record {records - 1}")
        if kind == KIND_INDEX:
            section.index(body, kwargs)
        elif kind == KIND_DATA:
            section.data(body, before)
    end = _msgpack(body, kwargs, source, "end record")
    if end != {"records": records}:
        raise MalformedSnapshotError(f"{source}: end record {end!r:.80} after {records} records")
    checksum = reader.finish()
    found = meta.get("schema_version", "unknown")
    if expected_schema is not None and found != expected_schema:
        raise SchemaVersionError(found, expected_schema, source)
    _check_structure(meta, source)
    if section is not None:
        meta["assets"] = section.finish(opener, checksum, source, limits.max_record_bytes)
    return meta


def _msgpack(body: bytes, kwargs: dict[str, Any], source: str, what: str) -> Any:
    try:
        return msgpack.unpackb(body, **kwargs)
    except (ValueError, msgpack.UnpackException) as exc:
        raise MalformedSnapshotError(
            f"{source}: {what}: checksum valid but msgpack invalid: {exc}"
        ) from exc


def legacy_bound(limits: Limits) -> int:
    """Largest format-1 file read under ``limits``."""
    if limits.max_bytes is None:
        return limits.legacy_max_bytes
    return min(limits.max_bytes, limits.legacy_max_bytes)


def unpack_legacy(
    data: bytes | memoryview, expected_schema: str | None, *, limits: Limits, source: str
) -> dict[str, Any]:
    """Verified payload of a format-1 snapshot's bytes."""
    bound = legacy_bound(limits)
    payload = legacy.unpack(
        data, max_bytes=bound, unpack_kwargs=_unpack_kwargs(limits, bound), source=source
    )
    if not isinstance(payload, dict):
        raise MalformedSnapshotError(f"{source}: payload is {type(payload).__name__}, not a map")
    found = payload.get("schema_version", "unknown")
    if expected_schema is not None and found != expected_schema:
        raise SchemaVersionError(found, expected_schema, source)
    _check_structure(payload, source)
    return payload


def unpack(
    data: bytes | memoryview,
    expected_schema: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    source: str = "snapshot",
) -> dict[str, Any]:
    """Verified payload of a snapshot's bytes, either format (arrays still encoded).

    ``expected_schema=None`` skips the version check (inspection only).
    """
    n = len(data)
    if n == 0:
        raise SnapshotEmptyError(f"{source}: snapshot file is empty (0 bytes)")
    if limits.max_bytes is not None and n > limits.max_bytes:
        raise SnapshotTooLargeError(
            f"{source}: snapshot of {n} bytes exceeds the limit of {limits.max_bytes} bytes"
        )
    if not is_container(bytes(data[:1])):
        return unpack_legacy(data, expected_schema, limits=limits, source=source)
    raw = bytes(data)
    return read_container(
        io.BytesIO(raw), lambda: io.BytesIO(raw), expected_schema, limits=limits, source=source
    )


def verify(
    data: bytes | memoryview, *, limits: Limits = DEFAULT_LIMITS, source: str = "snapshot"
) -> str:
    """Hex checksum of a snapshot's bytes (either format), or the reason it is refused."""
    payload = unpack(data, None, limits=limits, source=source)
    assets = payload.get("assets")
    if isinstance(assets, StreamedAssets):
        return assets.checksum
    return bytes(memoryview(data)[-CHECKSUM_LEN:]).decode("ascii")


def _check_structure(payload: dict[str, Any], source: str) -> None:
    missing = sorted(REQUIRED_KEYS - set(payload))
    extra = sorted(set(payload) - REQUIRED_KEYS - OPTIONAL_KEYS)
    if missing or extra:
        raise MalformedSnapshotError(f"{source}: payload missing {missing}, unexpected {extra}")
    ts = payload["timestamp"]
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise MalformedSnapshotError(f"{source}: timestamp {ts!r} is not an integer")
    if not isinstance(payload["config"], dict):
        raise MalformedSnapshotError(f"{source}: config is not a map")
    kernels = payload["kernels"]
    if not isinstance(kernels, dict) or set(kernels) != set(KERNEL_NAMES):
        keys = sorted(kernels) if isinstance(kernels, dict) else type(kernels).__name__
        raise MalformedSnapshotError(f"{source}: kernels must map {KERNEL_NAMES}, got {keys}")


def layout_hint(payload: Mapping[str, Any], config: PredictorConfig | None) -> str:
    """Layout (non hot-reloadable) config fields that differ from the snapshot's."""
    stored = payload.get("config")
    if config is None or not isinstance(stored, dict):
        return ""
    current = config.to_dict()
    diffs = [
        f"{name}: {stored.get(name, '<absent>')!r} -> {current[name]!r}"
        for name, spec in FIELD_SPECS.items()
        if not spec.dynamic and stored.get(name, "<absent>") != current[name]
    ]
    return "layout fields changed since the snapshot: " + "; ".join(diffs) if diffs else ""


def restore_sections(
    payload: Mapping[str, Any],
    templates: Mapping[str, Any],
    *,
    config: PredictorConfig | None = None,
) -> dict[str, Any]:
    """Decode sections into their templates, e.g. ``{"global": g0, "kernels": {...}}``.

    ``templates`` maps section names among global, telemetry, flags and
    kernels to the freshly initialised state of the current config. A
    layout difference raises ``LayoutMismatchError`` naming the path; with
    ``config`` its message also lists the layout fields that changed.
    """
    unknown = sorted(set(templates) - set(TREE_SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; restore 'assets' with restore_assets")
    try:
        return {name: decode_tree(payload[name], t, name) for name, t in templates.items()}
    except LayoutMismatchError as exc:
        raise LayoutMismatchError(exc.path, exc.reason, layout_hint(payload, config)) from exc


def restore_assets(
    payload: Mapping[str, Any],
    template: Any,
    *,
    config: PredictorConfig | None = None,
    host: bool = False,
) -> AssetBatch:
    """Decode the ``assets`` section; ``template`` is one asset's fresh state.

    ``host=True`` leaves the restored leaves as numpy arrays (format 2) so
    that a caller placing the state on its device holds one copy at a time.
    """
    if "assets" not in payload:
        raise LayoutMismatchError("assets", "the snapshot holds no assets section")
    section = payload["assets"]
    try:
        if isinstance(section, StreamedAssets):
            return section.restore(template, host=host)
        return decode_assets(section, template)
    except LayoutMismatchError as exc:
        raise LayoutMismatchError(exc.path, exc.reason, layout_hint(payload, config)) from exc
