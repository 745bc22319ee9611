"""Persistence of predictor state: msgpack + SHA-256 snapshots, atomic and async.

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
from predictor.snapshots.codec import (
    CHECKSUM_LEN,
    DEFAULT_MAX_BYTES,
    KERNEL_NAMES,
    Limits,
    build_payload,
    layout_hint,
    pack,
    pack_parts,
    restore_assets,
    restore_sections,
    unpack,
    verify,
)
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
    "KERNEL_NAMES",
    "AssetBatch",
    "AsyncSnapshotWriter",
    "EmergencyDumper",
    "HostKey",
    "LayoutMismatchError",
    "Limits",
    "LoadedSnapshot",
    "MalformedSnapshotError",
    "NoSnapshotError",
    "SchemaVersionError",
    "SnapshotEmptyError",
    "SnapshotResult",
    "SnapshotStore",
    "SnapshotTooLargeError",
    "SnapshotTruncatedError",
    "atomic_write",
    "build_dump",
    "build_payload",
    "decode_assets",
    "decode_tree",
    "decode_untyped",
    "encode_assets",
    "encode_tree",
    "fsync_directory",
    "is_temp_name",
    "layout_hint",
    "list_snapshots",
    "load_latest",
    "load_snapshot",
    "make_asset_batch",
    "pack",
    "pack_parts",
    "read_bounded",
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
