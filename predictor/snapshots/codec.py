"""Snapshot payload and file format: msgpack body + 64-char hex SHA-256.

A snapshot file is ``body || hex(sha256(body))`` where ``body`` is the
msgpack encoding of the payload map::

    {"schema_version": str, "timestamp": int (Unix ns), "config": {...},
     "global": tree, "telemetry": tree, "flags": tree,
     "kernels": {"A": tree, "B": tree, "C": tree, "D": tree},
     "assets": {...}}            # optional, see ``assets.py``

where each ``tree`` is a pytree encoded by ``tree.encode_tree``.

``unpack`` checks, in this order: emptiness, the size bound, the checksum
(``IntegrityError`` "checksum mismatch", or ``SnapshotTruncatedError`` when
the bytes end before the msgpack structure or the trailer), the msgpack
decoding under strict limits, the schema version (``SchemaVersionError``,
naming both versions), then the payload's structure. Fitting the state into
the current layout is ``restore_sections`` / ``restore_assets``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from predictor.config import FIELD_SPECS, PredictorConfig
from predictor.errors import IntegrityError
from predictor.snapshots.assets import AssetBatch, decode_assets, encode_assets
from predictor.snapshots.errors import (
    LayoutMismatchError,
    MalformedSnapshotError,
    SchemaVersionError,
    SnapshotEmptyError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
)
from predictor.snapshots.tree import decode_tree, encode_tree, to_host

CHECKSUM_LEN = 64
DEFAULT_MAX_BYTES = 1 << 30
KERNEL_NAMES = ("A", "B", "C", "D")
TREE_SECTIONS = ("global", "telemetry", "flags", "kernels")
REQUIRED_KEYS = frozenset({"schema_version", "timestamp", "config", *TREE_SECTIONS})
OPTIONAL_KEYS = frozenset({"assets"})


@dataclass(frozen=True)
class Limits:
    """Bounds applied before and while unpacking untrusted bytes.

    ``max_bytes`` bounds the whole file (and therefore any binary blob);
    the others bound one msgpack string, array or map.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
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

    Runs on the caller's thread: the copy (``to_host``) is the consistent
    cut of the state; packing, hashing and I/O may then happen elsewhere.
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
        payload["assets"] = encode_assets(assets)
    return payload


def pack_parts(payload: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """``(body, trailer)``: msgpack bytes and their 64-byte hex SHA-256."""
    body = msgpack.packb(payload, use_bin_type=True)
    assert isinstance(body, bytes)
    return body, hashlib.sha256(body).hexdigest().encode("ascii")


def pack(payload: Mapping[str, Any]) -> bytes:
    """File bytes of ``payload`` (body followed by its checksum)."""
    body, trailer = pack_parts(payload)
    return body + trailer


def _unpack_kwargs(limits: Limits) -> dict[str, Any]:
    return {
        "raw": False,
        "strict_map_key": True,
        "use_list": True,
        "max_str_len": limits.max_str_len,
        "max_bin_len": limits.max_bytes,
        "max_array_len": limits.max_array_len,
        "max_map_len": limits.max_map_len,
        # No extension types (msgpack timestamps included) in a snapshot.
        "max_ext_len": 0,
    }


def _ends_early(data: memoryview, limits: Limits) -> bool:
    """Whether ``data`` stops before one msgpack object plus a full trailer.

    Only called once the checksum failed, to tell truncation from damage.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=limits.max_bytes, **_unpack_kwargs(limits))
    unpacker.feed(data)
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return True
    except (ValueError, msgpack.UnpackException):  # damaged, but not short
        return False
    return bool(len(data) - unpacker.tell() < CHECKSUM_LEN)


def verify(
    data: bytes | memoryview, *, limits: Limits = DEFAULT_LIMITS, source: str = "snapshot"
) -> memoryview:
    """The checksummed body of a snapshot's bytes, or the reason it is refused."""
    view = memoryview(data)
    n = len(view)
    if n == 0:
        raise SnapshotEmptyError(f"{source}: snapshot file is empty (0 bytes)")
    if n > limits.max_bytes:
        raise SnapshotTooLargeError(
            f"{source}: snapshot of {n} bytes exceeds the limit of {limits.max_bytes} bytes"
        )
    if n <= CHECKSUM_LEN:
        raise SnapshotTruncatedError(
            f"{source}: snapshot truncated: {n} bytes, not even a payload and a "
            f"{CHECKSUM_LEN}-byte checksum"
        )
    body, stored = view[:-CHECKSUM_LEN], bytes(view[-CHECKSUM_LEN:])
    computed = hashlib.sha256(body).hexdigest().encode("ascii")
    if not hmac.compare_digest(stored, computed):
        if _ends_early(view, limits):
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
    data: bytes | memoryview,
    expected_schema: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    source: str = "snapshot",
) -> dict[str, Any]:
    """Verified payload map of a snapshot's bytes (arrays still encoded).

    ``expected_schema=None`` skips the version check (inspection only).
    """
    body = verify(data, limits=limits, source=source)
    try:
        payload = msgpack.unpackb(body, **_unpack_kwargs(limits))
    except (ValueError, msgpack.UnpackException) as exc:
        raise MalformedSnapshotError(
            f"{source}: checksum valid but msgpack invalid: {exc}"
        ) from exc
    if not isinstance(payload, dict):
        raise MalformedSnapshotError(f"{source}: payload is {type(payload).__name__}, not a map")
    found = payload.get("schema_version", "unknown")
    if expected_schema is not None and found != expected_schema:
        raise SchemaVersionError(found, expected_schema, source)
    _check_structure(payload, source)
    return payload


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
    payload: Mapping[str, Any], template: Any, *, config: PredictorConfig | None = None
) -> AssetBatch:
    """Decode the ``assets`` section; ``template`` is one asset's fresh state."""
    if "assets" not in payload:
        raise LayoutMismatchError("assets", "the snapshot holds no assets section")
    try:
        return decode_assets(payload["assets"], template)
    except LayoutMismatchError as exc:
        raise LayoutMismatchError(exc.path, exc.reason, layout_hint(payload, config)) from exc
