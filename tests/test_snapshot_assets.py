"""Multi-asset section: one file, stacked arrays as single blobs, validated metadata."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from predictor.snapshots import (
    LayoutMismatchError,
    MalformedSnapshotError,
    build_payload,
    make_asset_batch,
    pack,
    restore_assets,
    unpack,
)

SCHEMA = "1.0"


class One(NamedTuple):
    buf: jax.Array
    count: jax.Array
    key: jax.Array


def stacked(capacity: int, length: int = 16) -> One:
    return One(
        buf=jnp.arange(capacity * length, dtype=jnp.float64).reshape(capacity, length),
        count=jnp.arange(capacity, dtype=jnp.int64),
        key=jax.random.split(jax.random.key(1), capacity),
    )


def template(length: int = 16) -> One:
    return One(jnp.zeros(length), jnp.asarray(0, dtype=jnp.int64), jax.random.key(0))


def payload_with(batch: Any) -> dict[str, Any]:
    return build_payload(
        config={"schema_version": SCHEMA},
        global_state=None,
        telemetry={},
        flags={},
        kernels={"A": None, "B": None, "C": None, "D": None},
        assets=batch,
    )


def test_assets_round_trip_with_free_slots() -> None:
    state = stacked(8)
    batch = make_asset_batch(
        state, ["EURUSD", "BTC-USD", "ES"], seq=[5, 0, 7], last_ts_ns=[10, 20, 30], slots=[6, 0, 3]
    )
    back = restore_assets(unpack(pack(payload_with(batch)), SCHEMA), template())
    assert back.ids == ("EURUSD", "BTC-USD", "ES") and back.capacity == 8
    assert back.slots.tolist() == [6, 0, 3] and back.seq.dtype == np.int64
    assert back.seq.tolist() == [5, 0, 7] and back.last_ts_ns.tolist() == [10, 20, 30]
    assert np.asarray(back.state.buf).tobytes() == np.asarray(state.buf).tobytes()
    np.testing.assert_array_equal(
        jax.random.key_data(back.state.key), jax.random.key_data(state.key)
    )


def test_each_stacked_leaf_is_one_blob() -> None:
    section = payload_with(
        make_asset_batch(
            stacked(50),
            [f"a{i}" for i in range(50)],
            seq=np.zeros(50, np.int64),
            last_ts_ns=np.zeros(50, np.int64),
        )
    )["assets"]
    raw = msgpack.unpackb(msgpack.packb(section), raw=False)
    fields = raw["state"]["fields"]
    assert fields["buf"]["shape"] == [50, 16] and len(fields["buf"]["data"]) == 50 * 16 * 8
    assert fields["key"]["data"]["shape"] == [50, 2]


def test_stored_capacity_must_match_every_leaf_and_the_template() -> None:
    payload = unpack(
        pack(payload_with(make_asset_batch(stacked(4), ["a"], seq=[1], last_ts_ns=[2]))), SCHEMA
    )
    with pytest.raises(LayoutMismatchError) as info:
        restore_assets(payload, template(length=32))
    assert info.value.path == "assets.state.buf" and "shape [4, 16], expected [4, 32]" in str(
        info.value
    )
    with pytest.raises(LayoutMismatchError, match="no assets section"):
        restore_assets(unpack(pack(payload_with(None)), SCHEMA), template())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ids": ["a", "a"], "seq": [0, 0], "last_ts_ns": [0, 0]}, "unique"),
        ({"ids": ["a", "b"], "seq": [0, 0], "last_ts_ns": [0, 0], "slots": [1, 1]}, "unique"),
        ({"ids": ["a"], "seq": [0], "last_ts_ns": [0], "slots": [4]}, r"\[0, 4\)"),
        ({"ids": ["a", "b"], "seq": [0], "last_ts_ns": [0, 0]}, "seq: expected 2 integers"),
        ({"ids": ["a"], "seq": [0.5], "last_ts_ns": [0]}, "seq: expected 1 integers"),
    ],
)
def test_bad_metadata_is_refused_when_building(kwargs: dict[str, Any], message: str) -> None:
    ids = kwargs.pop("ids")
    with pytest.raises(ValueError, match=message):
        make_asset_batch(stacked(4), ids, **kwargs)


def test_inconsistent_slot_axis_is_refused() -> None:
    bad = stacked(4)._replace(count=jnp.zeros(5, dtype=jnp.int64))
    with pytest.raises(ValueError, match="disagree"):
        make_asset_batch(bad, [], seq=[], last_ts_ns=[])


def test_tampered_metadata_with_valid_checksum_is_malformed() -> None:
    payload = payload_with(make_asset_batch(stacked(4), ["a", "b"], seq=[1, 2], last_ts_ns=[3, 4]))
    payload["assets"]["slots"]["data"] = np.array([3, 3], dtype=np.int64).tobytes()
    with pytest.raises(MalformedSnapshotError, match="slots must be unique"):
        restore_assets(unpack(pack(payload), SCHEMA), template())
    payload["assets"]["ids"] = ["a"]
    with pytest.raises(MalformedSnapshotError, match=r"expected int64\[1\]"):
        restore_assets(unpack(pack(payload), SCHEMA), template())
