"""Wire format of the daemon (docs/wire.md).

Ticks travel PUSH -> PULL as one msgpack message holding either one map or a
list of maps::

    {"asset": str, "y": float, "ref": float (optional, defaults to y), "ts": int}

``y`` and ``ref`` are in the series' own units (msgpack ints are accepted and
converted to float; booleans are not numbers here), ``ts`` is Unix time in
nanoseconds, ``0 < ts < 2**63``. ``decode_ticks`` never raises: every input
yields valid ``Tick`` records and ``Reject`` records, each reject carrying one
reason code of ``RejectReason`` so the daemon can count them by reason.

In a batch each element is judged on its own: valid maps become ticks,
invalid ones become rejects carrying their position. A failure of the whole
message (not msgpack, too large, too long a list, not a map or list) gives a
single reject with ``position = None``.

Predictions travel on PUB as two frames: the asset id (UTF-8, the
subscription topic) and a msgpack map of every ``PredictionResult`` field
but ``rejected`` and ``reject_reason``, plus ``asset``, ``ts``, ``seq`` and
``latency_ns``. A tick rejected by the gate publishes
``{"asset", "ts", "seq", "rejected": reason}`` instead, ``reason`` one of
``predictor.core.gate.REJECT_NAMES`` but ``"none"``: ``non_finite``,
``outlier``, ``out_of_order``. A subscriber tells the two apart by the
``rejected`` key: a prediction never has it. A tick refused by the schema
whose asset is readable (``Reject.asset``) is answered the same way with
the schema's reason (``RejectReason``); ``decode_ticks(ts_window=...)``
adds the wall-clock plausibility check (``implausible_ts``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, NamedTuple, cast

import msgpack

#: Longest asset id in UTF-8 bytes (the shared-memory table stores it in a
#: field of this size).
ASSET_ID_MAX_BYTES = 64
#: Most ticks in one batch message.
MAX_BATCH = 4096
#: Largest tick message in bytes; the PULL socket's ZMQ_MAXMSGSIZE should be
#: no larger (a map of four keys is under 100 bytes).
MAX_FRAME_BYTES = 1 << 20

#: Largest timestamp accepted (exclusive): int64 nanoseconds.
TS_LIMIT = 1 << 63
#: Earliest plausible wall-clock timestamp: 2000-01-01T00:00:00Z in Unix ns
#: (a ``ts`` in seconds or milliseconds by mistake falls before it).
TS_EARLIEST_PLAUSIBLE = 946_684_800 * 1_000_000_000

#: Keys reserved for wire metadata in a prediction message.
PREDICTION_META_KEYS = frozenset({"asset", "ts", "seq", "latency_ns"})
#: ``PredictionResult`` fields a prediction message leaves out: a rejection
#: is a message of its own (``encode_rejection``), so ``rejected`` is the key
#: that tells the two kinds apart.
REJECTION_FIELDS = ("rejected", "reject_reason")

_REQUIRED = ("asset", "y", "ts")
_ALLOWED = frozenset({"asset", "y", "ref", "ts"})


class RejectReason(StrEnum):
    """Why a message or a tick was refused (stable metric label values)."""

    #: The frame is longer than the configured maximum.
    TOO_LARGE = "too_large"
    #: The bytes are not one complete msgpack object (or invalid UTF-8,
    #: nesting too deep, trailing bytes).
    NOT_MSGPACK = "not_msgpack"
    #: A msgpack extension type other than the built-in timestamp.
    EXT_TYPE = "ext_type"
    #: The message is neither a map nor a list, or a batch element is not a map.
    NOT_A_MAP = "not_a_map"
    #: A batch list with no element.
    EMPTY_BATCH = "empty_batch"
    #: A batch list longer than ``max_batch``.
    BATCH_TOO_LARGE = "batch_too_large"
    #: One of ``asset``, ``y``, ``ts`` is absent.
    MISSING_FIELD = "missing_field"
    #: A key other than ``asset``, ``y``, ``ref``, ``ts`` (or a non-string key).
    UNKNOWN_KEY = "unknown_key"
    #: A field of the wrong type (``y`` a string, ``ts`` a float, a bool, nil ...).
    WRONG_TYPE = "wrong_type"
    #: ``y`` or ``ref`` is NaN or infinite.
    NON_FINITE = "non_finite"
    #: ``asset`` is the empty string.
    ASSET_EMPTY = "asset_empty"
    #: ``asset`` is longer than ``max_asset_len`` UTF-8 bytes.
    ASSET_TOO_LONG = "asset_too_long"
    #: ``asset`` holds a non-printable character (control, separator, ...).
    ASSET_NOT_PRINTABLE = "asset_not_printable"
    #: ``ts`` is not in ``(0, 2**63)``.
    BAD_TIMESTAMP = "bad_timestamp"
    #: ``ts`` is a valid integer but not a plausible wall-clock time: before
    #: 2000-01-01 or further ahead of the receiver's clock than the allowed skew.
    IMPLAUSIBLE_TS = "implausible_ts"


#: Every reason code, for pre-creating metric label values.
REJECT_REASONS: tuple[str, ...] = tuple(r.value for r in RejectReason)


class Tick(NamedTuple):
    """One validated observation: ``y`` and ``ref`` in series units, ``ts`` in Unix ns."""

    asset: str
    y: float
    ref: float
    ts: int


class Reject(NamedTuple):
    """One refused message or batch element.

    ``position`` is the index in a batch list (``None`` for a whole-message
    failure or a single map); ``asset`` is the asset id when the element
    carried a usable one, whatever else is wrong with it (so that the reject
    can be attributed and published on the asset's topic), else ``None``;
    ``detail`` is a short human-readable note for the log line; ``ts`` is
    the element's ``ts`` when it is an int64 integer, else 0.
    """

    reason: RejectReason
    position: int | None = None
    asset: str | None = None
    detail: str = ""
    ts: int = 0


class _ExtRejected(Exception):
    """Raised by the ext hook: extension types are not part of the protocol."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _ExtRejected(code)


@functools.lru_cache(maxsize=16)
def _unpack_limits(max_asset_len: int, max_batch: int) -> dict[str, Any]:
    """Keyword arguments of ``msgpack.unpackb`` (the frame length is checked before).

    Strings only appear as keys (<= 5 chars) and asset ids; four bytes per
    character bounds the UTF-8 size of an id that may still be judged "too
    long" by the schema rather than by the unpacker. The returned dict is
    shared: callers only unpack it with ``**``.
    """
    return {
        "raw": False,
        "strict_map_key": True,
        "use_list": True,
        "ext_hook": _refuse_ext,
        "max_str_len": max(256, 4 * max_asset_len),
        "max_bin_len": 256,
        "max_array_len": max_batch,
        "max_map_len": 32,
        "max_ext_len": 16,
    }


def _classify_unpack_error(exc: Exception) -> RejectReason:
    if isinstance(exc, _ExtRejected):
        return RejectReason.EXT_TYPE
    msg = str(exc)
    if "exceeds max_array_len" in msg:
        return RejectReason.BATCH_TOO_LARGE
    if "exceeds max_" in msg:
        return RejectReason.TOO_LARGE
    if "map key" in msg:
        # strict_map_key refuses int/float/nil/... keys during unpacking.
        return RejectReason.UNKNOWN_KEY
    return RejectReason.NOT_MSGPACK


def _as_float(value: object) -> float | None:
    """``float(value)`` for an int or float that is not a bool, else ``None``."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return None


class TsWindow(NamedTuple):
    """Plausible timestamps, ``earliest <= ts <= latest`` (Unix ns, both inclusive)."""

    earliest: int
    latest: int


def plausible_window(now_ns: int, max_future_skew_ns: int) -> TsWindow:
    """Wall-clock plausibility: from 2000-01-01 to ``max_future_skew_ns`` after ``now_ns``."""
    return TsWindow(TS_EARLIEST_PLAUSIBLE, now_ns + max_future_skew_ns)


def _readable_asset(obj: Mapping[Any, Any], max_asset_len: int) -> str | None:
    """The map's ``asset`` when it is a usable id (a string the schema would accept), else None."""
    asset = obj.get("asset")
    if (
        isinstance(asset, str)
        and asset
        and len(asset.encode("utf-8")) <= max_asset_len
        and asset.isprintable()
    ):
        return asset
    return None


def _check_map(
    obj: Mapping[Any, Any], index: int | None, max_asset_len: int, window: TsWindow | None
) -> Tick | Reject:
    """Schema check of one tick map; a reject names the asset whenever it is readable.

    A reject's ``ts`` is the map's ``ts`` when that is an int64 integer, else 0.
    """
    res = _check_fields(obj, index, max_asset_len, window)
    if isinstance(res, Tick) or res.asset is not None:
        return res
    asset = _readable_asset(obj, max_asset_len)
    if asset is None:
        return res
    ts = obj.get("ts")
    stamp = (
        ts if isinstance(ts, int) and not isinstance(ts, bool) and -TS_LIMIT <= ts < TS_LIMIT else 0
    )
    return Reject(res.reason, index, asset, res.detail, stamp)


def _check_fields(
    obj: Mapping[Any, Any], index: int | None, max_asset_len: int, window: TsWindow | None
) -> Tick | Reject:
    """Schema check of one tick map (order of checks fixes the reported reason)."""
    keys = obj.keys()
    if not keys <= _ALLOWED:
        key = next(k for k in keys if k not in _ALLOWED)
        return Reject(RejectReason.UNKNOWN_KEY, index, None, f"key {str(key)[:32]!r}")
    if not ("asset" in keys and "y" in keys and "ts" in keys):
        key = next(k for k in _REQUIRED if k not in keys)
        return Reject(RejectReason.MISSING_FIELD, index, None, f"missing {key!r}")

    asset = obj["asset"]
    if not isinstance(asset, str):
        return Reject(RejectReason.WRONG_TYPE, index, None, "asset is not a string")
    if not asset:
        return Reject(RejectReason.ASSET_EMPTY, index, None, "empty asset id")
    # UTF-8 needs at most 4 bytes per character: encode only when it may matter.
    if 4 * len(asset) > max_asset_len and len(asset.encode("utf-8")) > max_asset_len:
        return Reject(
            RejectReason.ASSET_TOO_LONG, index, None, f"asset id over {max_asset_len} bytes"
        )
    if not asset.isprintable():
        return Reject(RejectReason.ASSET_NOT_PRINTABLE, index, None, "non-printable asset id")

    y = _as_float(obj["y"])
    if y is None:
        return Reject(RejectReason.WRONG_TYPE, index, None, "y is not a number")
    raw_ref = obj.get("ref", y)
    ref = _as_float(raw_ref)
    if ref is None:
        return Reject(RejectReason.WRONG_TYPE, index, None, "ref is not a number")
    ts = obj["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool):
        return Reject(RejectReason.WRONG_TYPE, index, None, "ts is not an integer")
    if not (math.isfinite(y) and math.isfinite(ref)):
        return Reject(RejectReason.NON_FINITE, index, None, "y or ref is not finite")
    if not 0 < ts < TS_LIMIT:
        return Reject(RejectReason.BAD_TIMESTAMP, index, None, "ts outside (0, 2**63) ns")
    if window is not None and not window.earliest <= ts <= window.latest:
        side = "before 2000-01-01" if ts < window.earliest else "too far in the future"
        return Reject(RejectReason.IMPLAUSIBLE_TS, index, None, f"ts {ts} {side}")
    # tuple.__new__ skips the NamedTuple's Python-level constructor (hot path).
    return _new_tuple(Tick, (asset, y, ref, ts))


_new_tuple = tuple.__new__


def decode_ticks(
    frame: bytes | bytearray | memoryview,
    *,
    max_asset_len: int = ASSET_ID_MAX_BYTES,
    max_batch: int = MAX_BATCH,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    ts_window: TsWindow | None = None,
) -> tuple[list[Tick], list[Reject]]:
    """Decode and validate one tick message; never raises.

    Returns the valid ticks in message order and the rejects. A single map
    gives one tick or one reject; a list gives one entry per element, or one
    whole-message reject when it is empty or longer than ``max_batch``.
    ``ts_window`` (``plausible_window``), when given, refuses a ``ts``
    outside it as ``implausible_ts``; without it any ``0 < ts < 2**63`` is
    accepted (event time in arbitrary units).
    """
    if len(frame) > max_frame_bytes:
        return [], [Reject(RejectReason.TOO_LARGE, None, None, f"{len(frame)} bytes")]
    try:
        obj = msgpack.unpackb(frame, **_unpack_limits(max_asset_len, max_batch))
    except Exception as exc:  # the unpacker raises many types; none may escape
        return [], [Reject(_classify_unpack_error(exc), None, None, type(exc).__name__)]

    if isinstance(obj, dict):
        one = _check_map(obj, None, max_asset_len, ts_window)
        return ([one], []) if isinstance(one, Tick) else ([], [one])
    if not isinstance(obj, list):
        return [], [Reject(RejectReason.NOT_A_MAP, None, None, type(obj).__name__)]
    if not obj:
        return [], [Reject(RejectReason.EMPTY_BATCH)]
    if len(obj) > max_batch:
        return [], [Reject(RejectReason.BATCH_TOO_LARGE, None, None, f"{len(obj)} elements")]
    ticks: list[Tick] = []
    rejects: list[Reject] = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            rejects.append(Reject(RejectReason.NOT_A_MAP, i, None, type(item).__name__))
            continue
        res = _check_map(item, i, max_asset_len, ts_window)
        if isinstance(res, Tick):
            ticks.append(res)
        else:
            rejects.append(res)
    return ticks, rejects


# --- encoding (clients and the daemon's publisher) -------------------------


def tick_map(asset: str, y: float, ts: int, ref: float | None = None) -> dict[str, Any]:
    """The wire map of one tick (``ref`` omitted when ``None``)."""
    out: dict[str, Any] = {"asset": asset, "y": y, "ts": ts}
    if ref is not None:
        out["ref"] = ref
    return out


def encode_tick(asset: str, y: float, ts: int, ref: float | None = None) -> bytes:
    """One tick message (a single msgpack map)."""
    return cast(bytes, msgpack.packb(tick_map(asset, y, ts, ref), use_bin_type=True))


def encode_ticks(ticks: Sequence[Tick | tuple[str, float, float, int]]) -> bytes:
    """One batch message (a msgpack list of maps) from ``(asset, y, ref, ts)`` records."""
    records = [{"asset": a, "y": y, "ref": r, "ts": ts} for a, y, r, ts in ticks]
    return cast(bytes, msgpack.packb(records, use_bin_type=True))


def encode_prediction(
    asset: str, seq: int, ts: int, latency_ns: int, result: Mapping[str, Any]
) -> list[bytes]:
    """The two PUB frames ``[asset id, msgpack map]`` of one prediction.

    ``result`` is ``PredictionResult.to_dict()``; its ``rejected`` and
    ``reject_reason`` fields are left out. ``latency_ns`` is the time from
    receipt of the tick to the result in ns. Raises ``ValueError`` if
    ``result`` uses a reserved metadata key, or is a rejection
    (``rejected`` true: publish it with ``encode_rejection``).
    """
    if "asset" in result or "ts" in result or "seq" in result or "latency_ns" in result:
        clash = sorted(PREDICTION_META_KEYS.intersection(result))
        raise ValueError(f"result uses reserved wire keys: {clash}")
    if result.get("rejected"):
        raise ValueError(
            f"a rejected result ({result.get('reject_reason')!r}) is published "
            "with encode_rejection, not as a prediction"
        )
    body = {k: v for k, v in result.items() if k not in REJECTION_FIELDS}
    body["asset"] = asset
    body["ts"] = ts
    body["seq"] = seq
    body["latency_ns"] = latency_ns
    return [asset.encode("utf-8"), msgpack.packb(body, use_bin_type=True)]


def encode_rejection(asset: str, seq: int, ts: int, reason: str) -> list[bytes]:
    """The two PUB frames of a gate rejection: ``{"asset", "ts", "seq", "rejected"}``.

    ``reason`` is the gate's name for it (``predictor.core.gate.REJECT_NAMES``).
    """
    body = {"asset": asset, "ts": ts, "seq": seq, "rejected": str(reason)}
    return [asset.encode("utf-8"), msgpack.packb(body, use_bin_type=True)]


def decode_prediction(frames: Sequence[bytes | bytearray | memoryview]) -> dict[str, Any]:
    """Inverse of ``encode_prediction`` / ``encode_rejection`` (for subscribers).

    Raises ``ValueError`` if there are not two frames, the body is not a map,
    or the topic and the body's ``asset`` disagree.
    """
    if len(frames) != 2:
        raise ValueError(f"a prediction has 2 frames, got {len(frames)}")
    topic = bytes(frames[0]).decode("utf-8")
    body = msgpack.unpackb(bytes(frames[1]), raw=False, strict_map_key=True)
    if not isinstance(body, dict):
        raise ValueError("prediction body is not a map")
    if body.get("asset") != topic:
        raise ValueError(f"topic {topic!r} does not match asset {body.get('asset')!r}")
    return body
