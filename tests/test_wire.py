"""Tick decoding and prediction encoding (predictor.ipc.wire)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.core.types import PredictionResult
from predictor.ipc.wire import (
    ASSET_ID_MAX_BYTES,
    REJECT_REASONS,
    Reject,
    RejectReason,
    Tick,
    decode_prediction,
    decode_ticks,
    encode_prediction,
    encode_rejection,
    encode_tick,
    encode_ticks,
)

pack = msgpack.packb
GOOD = {"asset": "EURUSD", "y": 1.25, "ts": 1_700_000_000_000_000_000}


def _one(frame: bytes, **kw: Any) -> Tick | Reject:
    ticks, rejects = decode_ticks(frame, **kw)
    assert len(ticks) + len(rejects) == 1
    return ticks[0] if ticks else rejects[0]


def test_single_tick_round_trip_and_ref_default() -> None:
    assert _one(encode_tick("EURUSD", 1.25, 17)) == Tick("EURUSD", 1.25, 1.25, 17)
    assert _one(encode_tick("X", -3.5, 5, ref=2.0)) == Tick("X", -3.5, 2.0, 5)


def test_int_values_become_float() -> None:
    tick = _one(pack({"asset": "A", "y": 3, "ref": -7, "ts": 9}))
    assert isinstance(tick, Tick)
    assert tick == Tick("A", 3.0, -7.0, 9)
    assert type(tick.y) is float and type(tick.ref) is float


def test_batch_round_trip_in_order_from_any_buffer() -> None:
    records = [Tick(f"A{i % 3}", i * 0.5, i * 0.25, 1000 + i) for i in range(50)]
    frame = encode_ticks(records)
    for buf in (frame, bytearray(frame), memoryview(frame)):
        ticks, rejects = decode_ticks(buf)
        assert rejects == []
        assert ticks == records


def test_batch_judges_each_element() -> None:
    frame = pack(
        [
            GOOD,
            {"asset": "B", "y": "oops", "ts": 1},
            7,
            {**GOOD, "asset": "C", "y": float("nan")},
            {**GOOD, "asset": "D"},
        ]
    )
    ticks, rejects = decode_ticks(frame)
    assert [t.asset for t in ticks] == ["EURUSD", "D"]
    assert rejects == [
        Reject(RejectReason.WRONG_TYPE, 1, "B", "y is not a number", 1),
        Reject(RejectReason.NOT_A_MAP, 2, None, "int"),
        Reject(RejectReason.NON_FINITE, 3, "C", "y or ref is not finite", GOOD["ts"]),
    ]


# One crafted input per reason code (several where the reason has several causes).
CRAFTED: dict[RejectReason, list[bytes]] = {
    RejectReason.TOO_LARGE: [
        b"\x90" * 5000,  # over max_frame_bytes=4096 below
        pack({**GOOD, "asset": "x" * 2000}),  # over the unpacker's string limit
        pack({f"k{i}": i for i in range(40)}),  # over the map size limit
    ],
    RejectReason.NOT_MSGPACK: [
        b"",
        b"\xc1",  # the one never-used msgpack byte
        pack(GOOD)[:-3],  # truncated
        pack(GOOD) + b"\x01",  # trailing data
        b"\xa2\xff\xfe",  # invalid UTF-8 string
        b"\x91" * 3000,  # nesting beyond the unpacker's stack
    ],
    RejectReason.EXT_TYPE: [pack(msgpack.ExtType(5, b"abc")), pack([msgpack.ExtType(1, b"")])],
    RejectReason.NOT_A_MAP: [pack(3), pack("EURUSD"), pack(None), pack(1.5)],
    RejectReason.EMPTY_BATCH: [pack([])],
    RejectReason.BATCH_TOO_LARGE: [pack([GOOD] * 5), pack([0] * 100)],
    RejectReason.MISSING_FIELD: [
        pack({"asset": "A", "y": 1.0}),
        pack({"asset": "A", "ts": 1}),
        pack({"y": 1.0, "ts": 1}),
        pack({}),
    ],
    RejectReason.UNKNOWN_KEY: [
        pack({**GOOD, "extra": 1}),
        pack({**GOOD, b"asset": "A"}),
        b"\x84" + pack(1) + pack(2) + pack(GOOD)[1:],  # int key, refused while unpacking
    ],
    RejectReason.WRONG_TYPE: [
        pack({**GOOD, "asset": 5}),
        pack({**GOOD, "asset": b"bytes"}),
        pack({**GOOD, "y": "1.0"}),
        pack({**GOOD, "y": True}),
        pack({**GOOD, "ref": None}),
        pack({**GOOD, "ref": [1.0]}),
        pack({**GOOD, "ts": 1.0e18}),
        pack({**GOOD, "ts": False}),
        pack({**GOOD, "ts": msgpack.Timestamp(1, 0)}),
    ],
    RejectReason.NON_FINITE: [
        pack({**GOOD, "y": float("nan")}),
        pack({**GOOD, "y": float("-inf")}),
        pack({**GOOD, "ref": float("inf")}),
    ],
    RejectReason.ASSET_EMPTY: [pack({**GOOD, "asset": ""})],
    RejectReason.ASSET_TOO_LONG: [
        pack({**GOOD, "asset": "A" * (ASSET_ID_MAX_BYTES + 1)}),
        pack({**GOOD, "asset": "é" * (ASSET_ID_MAX_BYTES // 2 + 1)}),  # 2 bytes each
    ],
    RejectReason.ASSET_NOT_PRINTABLE: [
        pack({**GOOD, "asset": "EUR\nUSD"}),
        pack({**GOOD, "asset": "\x00"}),
        pack({**GOOD, "asset": "A\u2028"}),
    ],
    RejectReason.BAD_TIMESTAMP: [
        pack({**GOOD, "ts": 0}),
        pack({**GOOD, "ts": -1}),
        pack({**GOOD, "ts": 2**63}),
        pack({**GOOD, "ts": 2**64 - 1}),
    ],
}


def test_every_reason_has_a_crafted_input() -> None:
    # implausible_ts needs a plausibility window (tests/test_feed_and_metrics.py).
    assert {r.value for r in CRAFTED} | {"implausible_ts"} == set(REJECT_REASONS)


@pytest.mark.parametrize(
    ("reason", "frame"),
    [(reason, frame) for reason, frames in CRAFTED.items() for frame in frames],
)
def test_crafted_input_gives_its_reason(reason: RejectReason, frame: bytes) -> None:
    ticks, rejects = decode_ticks(frame, max_batch=4, max_frame_bytes=4096)
    assert ticks == []
    assert [r.reason for r in rejects] == [reason]
    assert isinstance(rejects[0].reason, RejectReason)


def test_custom_asset_length() -> None:
    frame = pack({**GOOD, "asset": "ABCDEFGHIJ"})
    assert isinstance(_one(frame, max_asset_len=10), Tick)
    assert _one(frame, max_asset_len=9).reason is RejectReason.ASSET_TOO_LONG  # type: ignore[union-attr]


# --- fuzzing ---------------------------------------------------------------


def _check_output(ticks: list[Tick], rejects: list[Reject]) -> None:
    for t in ticks:
        assert type(t) is Tick
        assert isinstance(t.asset, str) and t.asset.isprintable()
        assert 0 < len(t.asset.encode()) <= ASSET_ID_MAX_BYTES
        assert type(t.y) is float and math.isfinite(t.y)
        assert type(t.ref) is float and math.isfinite(t.ref)
        assert type(t.ts) is int and 0 < t.ts < 2**63
    for r in rejects:
        assert type(r) is Reject
        assert r.reason in RejectReason
        assert r.position is None or isinstance(r.position, int)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_never_raise(data: bytes) -> None:
    ticks, rejects = decode_ticks(data)
    _check_output(ticks, rejects)
    assert ticks or rejects


def _is_number(v: object) -> bool:
    return type(v) in (int, float)


def _expected(obj: object) -> Tick | None:
    """Independent statement of the schema: the tick ``obj`` encodes, or None."""
    if type(obj) is not dict or not {"asset", "y", "ts"} <= obj.keys() <= {
        "asset",
        "y",
        "ref",
        "ts",
    }:
        return None
    asset, y, ts = obj["asset"], obj["y"], obj["ts"]
    ref = obj.get("ref", y)
    ok = (
        type(asset) is str
        and 1 <= len(asset.encode()) <= ASSET_ID_MAX_BYTES
        and all(ch.isprintable() for ch in asset)
        and _is_number(y)
        and _is_number(ref)
        and math.isfinite(y)
        and math.isfinite(ref)
        and type(ts) is int
        and 1 <= ts <= 2**63 - 1
    )
    return Tick(asset, float(y), float(ref), ts) if ok else None


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
    | st.binary(max_size=16)
)
field_values = {
    "asset": st.text(max_size=70) | scalars,
    "y": scalars,
    "ref": scalars,
    "ts": st.integers(min_value=-5, max_value=2**64 - 1) | scalars,
}
tick_like = st.fixed_dictionaries(
    {k: field_values[k] for k in ("asset", "y", "ts")},
    optional={"ref": field_values["ref"], "extra": scalars},
)
anything = st.recursive(
    scalars | tick_like,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(tick_like, st.lists(tick_like, min_size=1, max_size=8), anything))
def test_fuzz_msgpack_objects_match_the_schema(obj: object) -> None:
    frame = msgpack.packb(obj, use_bin_type=True)
    ticks, rejects = decode_ticks(frame, max_frame_bytes=1 << 16)
    _check_output(ticks, rejects)
    items = obj if isinstance(obj, list) and len(obj) > 0 else [obj]
    if isinstance(obj, list) and not obj:
        assert [r.reason for r in rejects] == [RejectReason.EMPTY_BATCH]
        return
    expected = [_expected(o) for o in items]
    assert ticks == [e for e in expected if e is not None]
    assert len(rejects) == sum(e is None for e in expected)
    if isinstance(obj, list):
        assert [r.position for r in rejects] == [i for i, e in enumerate(expected) if e is None]


# --- predictions -----------------------------------------------------------


def _result(**over: Any) -> PredictionResult:
    fields: dict[str, Any] = {
        "predicted_next": 0.25,
        "holder_exponent": 0.5,
        "cusum_drift": 1.5,
        "distance_to_collapse": 0.3,
        "free_energy": -1.0,
        "kurtosis": 3.2,
        "dgm_entropy": 0.7,
        "adaptive_threshold": 8.0,
        "weights": (0.25, 0.25, 0.3, 0.2),
        "sinkhorn_converged": True,
        "degraded_inference_mode": False,
        "emergency_mode": False,
        "regime_change_detected": False,
        "mode_collapse_warning": False,
        "mode": "Standard",
        "predicted_value": 101.5,
        "interval_lower": 100.0,
        "interval_upper": 103.0,
    }
    fields.update(over)
    return PredictionResult(**fields)


def test_prediction_round_trip() -> None:
    res = _result(kurtosis=float("nan"), mode="Robust")
    frames = encode_prediction("BTC-USD", 42, 1_700_000_000_000_000_001, 12_345, res.to_dict())
    assert len(frames) == 2 and frames[0] == b"BTC-USD"
    body = decode_prediction(frames)
    assert (body["asset"], body["seq"], body["ts"], body["latency_ns"]) == (
        "BTC-USD",
        42,
        1_700_000_000_000_000_001,
        12_345,
    )
    back = PredictionResult.from_dict(body)
    assert math.isnan(back.kurtosis)
    assert back.to_dict().keys() == res.to_dict().keys()
    assert back == _result(kurtosis=back.kurtosis, mode="Robust")


def test_prediction_refuses_reserved_keys() -> None:
    with pytest.raises(ValueError, match="reserved"):
        encode_prediction("A", 1, 1, 1, {"seq": 3})


def test_rejection_round_trip() -> None:
    frames = encode_rejection("ÉTOILE", 7, 99, "stale")
    assert frames[0] == "ÉTOILE".encode()
    assert decode_prediction(frames) == {"asset": "ÉTOILE", "seq": 7, "ts": 99, "rejected": "stale"}


def test_decode_prediction_checks_frames() -> None:
    frames = encode_rejection("A", 1, 1, "stale")
    with pytest.raises(ValueError, match="2 frames"):
        decode_prediction(frames[:1])
    with pytest.raises(ValueError, match="does not match"):
        decode_prediction([b"B", frames[1]])
    with pytest.raises(ValueError, match="not a map"):
        decode_prediction([b"A", msgpack.packb([1])])
