"""Records exchanged with the daemon's loop, and their Redis encodings.

Tick stream entry (one stream per shard, ``<prefix>:ticks:<shard>``)::

    a = asset (UTF-8), y = repr(float), t = ts (Unix ns, decimal), r = repr(ref) (optional)

Predictions stream entry (``<prefix>:pred:<shard>``)::

    a = asset, q = per-asset sequence number, t = ts (Unix ns), m = msgpack body

Checkpoint blob (field ``asset`` of the hash ``<prefix>:ckpt:<shard>``) is a
snapshot file of the project's codec (``predictor.snapshots.pack`` /
``unpack``: msgpack records chained by SHA-256, every bit flip refused) of
the payload::

    {"schema_version": "cluster-checkpoint/1", "timestamp": Unix ns,
     "config": {"asset": str, "shard": int, "epoch": int,
                "entry_id": "ms-seq", "seq": int},
     "global": encode_tree(caller's state), "telemetry": None, "flags": None,
     "kernels": {"A": None, "B": None, "C": None, "D": None}}

``entry_id`` is the last tick stream entry the state includes: on a takeover
the new owner replays exactly the asset's entries after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from predictor.snapshots import (
    KERNEL_NAMES,
    decode_tree,
    decode_untyped,
    encode_tree,
    pack,
    unpack,
)

#: Schema of a checkpoint blob (a checkpoint of another schema is refused).
CHECKPOINT_SCHEMA = "cluster-checkpoint/1"
TS_LIMIT = 1 << 63


class StreamTick(NamedTuple):
    """One tick read from a shard's stream; ``replay`` marks a takeover replay."""

    shard: int
    entry_id: str
    asset: str
    y: float
    ts: int
    ref: float | None
    replay: bool = False


class Prediction(NamedTuple):
    """A prediction for the shard's predictions stream; ``body`` is msgpack bytes."""

    asset: str
    seq: int
    ts: int
    body: bytes


class AssetCheckpoint(NamedTuple):
    """An asset's state after the tick ``entry_id`` (its ``seq``-th prediction).

    ``state`` is any pytree ``predictor.snapshots.encode_tree`` accepts
    (dicts, NamedTuples, numpy / JAX arrays, scalars).
    """

    asset: str
    state: Any
    entry_id: str
    seq: int


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint read from Redis; ``node`` is the encoded state."""

    asset: str
    shard: int
    epoch: int
    entry_id: str
    seq: int
    written_ms: int
    node: Any = field(repr=False)

    @property
    def state(self) -> Any:
        """The state without a template (dicts, lists, read-only numpy arrays)."""
        return decode_untyped(self.node, f"checkpoint[{self.asset}]")

    def restore(self, template: Any) -> Any:
        """The state fitted into ``template`` (raises ``LayoutMismatchError``)."""
        return decode_tree(self.node, template, f"checkpoint[{self.asset}]")


@dataclass(frozen=True)
class ShardAssigned:
    """This member now owns ``shard`` under ``epoch``.

    Restore the assets of ``checkpoints`` before the shard's ticks, which
    follow this event (first the replayed ones, ``replay=True``). Assets in
    ``corrupt`` had a checkpoint that failed its SHA-256 check: they start
    from a fresh state. ``lost`` counts pending entries already trimmed from
    the stream (a backlog beyond ``stream_maxlen``).
    """

    shard: int
    epoch: int
    checkpoints: Mapping[str, Checkpoint]
    replayed: int
    corrupt: tuple[str, ...] = ()
    lost: int = 0


@dataclass(frozen=True)
class ShardRevoked:
    """This member no longer owns ``shard``: drop its assets after this event.

    ``reason`` is ``"rebalance"`` (another live member should own it; with
    ``handoff`` the loop should call ``release(shard, final_checkpoints)``),
    ``"fenced"`` (another member took it over: its checkpoints were refused)
    or ``"closing"``. No tick of the shard follows this event.
    """

    shard: int
    epoch: int
    reason: str
    handoff: bool = False


Event = ShardAssigned | ShardRevoked


def entry_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id ``"ms-seq"``."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def validate_tick(asset: str, y: float, ts: int, ref: float | None) -> None:
    """Raise ``ValueError`` for a tick the daemon's wire gate would refuse."""
    if not isinstance(asset, str) or not asset or len(asset.encode("utf-8")) > 64:
        raise ValueError(f"asset must be a non-empty string of at most 64 bytes, got {asset!r}")
    if isinstance(y, bool) or not isinstance(y, int | float) or not math.isfinite(y):
        raise ValueError(f"y must be a finite number, got {y!r}")
    if ref is not None and (
        isinstance(ref, bool) or not isinstance(ref, int | float) or not math.isfinite(ref)
    ):
        raise ValueError(f"ref must be a finite number or None, got {ref!r}")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 < ts < TS_LIMIT:
        raise ValueError(f"ts must be an integer in (0, 2**63) (Unix ns), got {ts!r}")


def tick_fields(asset: str, y: float, ts: int, ref: float | None) -> dict[str, str]:
    """Stream entry fields of a tick (floats as ``repr``: exact round trip)."""
    out = {"a": asset, "y": repr(float(y)), "t": str(int(ts))}
    if ref is not None:
        out["r"] = repr(float(ref))
    return out


def decode_tick(shard: int, entry_id: str, fields: Mapping[bytes, bytes]) -> StreamTick | None:
    """The tick of a stream entry, or ``None`` when the entry is malformed."""
    try:
        asset = fields[b"a"].decode("utf-8")
        y = float(fields[b"y"])
        ts = int(fields[b"t"])
        raw_ref = fields.get(b"r")
        ref = None if raw_ref is None else float(raw_ref)
        validate_tick(asset, y, ts, ref)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return StreamTick(shard, entry_id, asset, y, ts, ref)


def prediction_fields(p: Prediction) -> dict[str, str | bytes]:
    """Stream entry fields of a prediction."""
    return {"a": p.asset, "q": str(int(p.seq)), "t": str(int(p.ts)), "m": p.body}


def decode_prediction(fields: Mapping[bytes, bytes]) -> Prediction | None:
    """The prediction of a predictions-stream entry, or ``None`` when malformed."""
    try:
        return Prediction(
            fields[b"a"].decode("utf-8"), int(fields[b"q"]), int(fields[b"t"]), fields[b"m"]
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def encode_checkpoint(
    shard: int, epoch: int, asset: str, host_state: Any, entry_id: str, seq: int
) -> bytes:
    """Checkpoint blob (see the module doc); ``host_state`` comes from ``to_host``."""
    return pack(
        {
            "schema_version": CHECKPOINT_SCHEMA,
            "timestamp": time.time_ns(),
            "config": {
                "asset": asset,
                "shard": int(shard),
                "epoch": int(epoch),
                "entry_id": entry_id,
                "seq": int(seq),
            },
            "global": encode_tree(host_state, f"checkpoint[{asset}]"),
            "telemetry": None,
            "flags": None,
            "kernels": dict.fromkeys(KERNEL_NAMES),
        }
    )


class CorruptCheckpointError(ValueError):
    """A checkpoint blob failed its checksums or is not a checkpoint of this schema."""


def decode_checkpoint(blob: bytes, source: str) -> Checkpoint:
    """Verify (SHA-256) and decode a checkpoint blob; ``CorruptCheckpointError`` if not."""
    try:
        doc = unpack(blob, CHECKPOINT_SCHEMA, source=source)
        meta = doc["config"]
        entry_key(str(meta["entry_id"]))
        return Checkpoint(
            asset=str(meta["asset"]),
            shard=int(meta["shard"]),
            epoch=int(meta["epoch"]),
            entry_id=str(meta["entry_id"]),
            seq=int(meta["seq"]),
            written_ms=int(doc["timestamp"]) // 1_000_000,
            node=doc["global"],
        )
    except Exception as exc:  # checksum, truncation, schema, msgpack and shape errors alike
        raise CorruptCheckpointError(f"{source}: {exc}") from exc
