"""Persistence of predictor state: hashed, streamed snapshots, atomic and async.

File format (version 2; ``container``, ``codec`` and ``chunked`` hold the
details)::

    preamble   magic b"\xc1PSNAP\r\n", version u32 = 2, crc32
    META       msgpack: schema_version, timestamp, config, global, telemetry,
               flags, kernels, and the assets header (capacity, count, leaves)
    INDEX*     msgpack: asset ids, slots, seq, last_ts_ns (a range of assets)
    DATA*      raw little-endian rows of the live assets, every leaf (a range)
    END        msgpack {"records": n}
    trailer    64 hex characters: the SHA-256 chain's last digest

Each record is ``header (kind, number, length, crc32) | payload | digest``
with ``digest = SHA-256(previous digest | header | payload)``. Only occupied
slots are written (the file grows with the live assets, not the capacity),
records are about 8 MiB, and a load holds one record at a time besides the
state it restores: no whole-file size bound is needed. Writes stream the
records into a temporary file, fsync it, rename it over the target and fsync
the directory. Every single bit flip is refused (``IntegrityError``), a
truncated file is ``SnapshotTruncatedError``, a state that does not fit the
current layout ``LayoutMismatchError`` naming the path. Format-1 files (one
msgpack body and its hex SHA-256) are still read.

Typical use (the caller owns the state pytree and its fresh template)::

    payload = build_payload(config=cfg, global_state=g, telemetry=t, flags=f,
                            kernels={"A": a, "B": b, "C": c, "D": d})
    store = SnapshotStore(directory, keep=5)
    store.save(payload)                        # synchronous, or
    future = store.submit(writer, payload)     # AsyncSnapshotWriter pool

    loaded = store.load_latest(cfg.schema_version,
                               restore=lambda p: restore_sections(p, templates, config=cfg))
"""

from predictor.snapshots.assets import AssetBatch, decode_assets, encode_assets, make_asset_batch
from predictor.snapshots.atomic import atomic_write, fsync_directory, is_temp_name, read_bounded
from predictor.snapshots.chunked import (
    DEFAULT_RECORD_BYTES,
    HostAssets,
    StreamedAssets,
    host_assets,
)
from predictor.snapshots.codec import (
    CHECKSUM_LEN,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    KERNEL_NAMES,
    Limits,
    SnapshotEncoder,
    build_payload,
    layout_hint,
    pack,
    restore_assets,
    restore_sections,
    unpack,
    verify,
)
from predictor.snapshots.container import FORMAT_VERSION
from predictor.snapshots.emergency import (
    EmergencyDumper,
    build_dump,
    safe_asset_name,
    save_emergency_dump,
)
from predictor.snapshots.errors import (
    LayoutMismatchError,
    MalformedSnapshotError,
    NoSnapshotError,
    SchemaVersionError,
    SnapshotEmptyError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
)
from predictor.snapshots.files import SnapshotResult, load_snapshot, save_snapshot
from predictor.snapshots.paths import SnapshotPathError, resolve_snapshot_path
from predictor.snapshots.store import (
    LoadedSnapshot,
    SnapshotStore,
    list_snapshots,
    load_latest,
    snapshot_name,
)
from predictor.snapshots.tree import (
    HostKey,
    decode_tree,
    decode_untyped,
    encode_tree,
    to_host,
)
from predictor.snapshots.writer import AsyncSnapshotWriter

__all__ = [
    "CHECKSUM_LEN",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RECORD_BYTES",
    "DEFAULT_RECORD_BYTES",
    "FORMAT_VERSION",
    "KERNEL_NAMES",
    "AssetBatch",
    "AsyncSnapshotWriter",
    "EmergencyDumper",
    "HostAssets",
    "HostKey",
    "LayoutMismatchError",
    "Limits",
    "LoadedSnapshot",
    "MalformedSnapshotError",
    "NoSnapshotError",
    "SchemaVersionError",
    "SnapshotEmptyError",
    "SnapshotEncoder",
    "SnapshotPathError",
    "SnapshotResult",
    "SnapshotStore",
    "SnapshotTooLargeError",
    "SnapshotTruncatedError",
    "StreamedAssets",
    "atomic_write",
    "build_dump",
    "build_payload",
    "decode_assets",
    "decode_tree",
    "decode_untyped",
    "encode_assets",
    "encode_tree",
    "fsync_directory",
    "host_assets",
    "is_temp_name",
    "layout_hint",
    "list_snapshots",
    "load_latest",
    "load_snapshot",
    "make_asset_batch",
    "pack",
    "read_bounded",
    "resolve_snapshot_path",
    "restore_assets",
    "restore_sections",
    "safe_asset_name",
    "save_emergency_dump",
    "save_snapshot",
    "snapshot_name",
    "to_host",
    "unpack",
    "verify",
]
