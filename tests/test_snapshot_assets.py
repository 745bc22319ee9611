"""Multi-asset section: live rows only, in index and data records, validated metadata."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from predictor.snapshots import (
    HostAssets,
    LayoutMismatchError,
    MalformedSnapshotError,
    build_payload,
    make_asset_batch,
    pack,
    restore_assets,
    unpack,
)
from predictor.snapshots.container import KIND_DATA, KIND_INDEX, RecordReader, RecordWriter

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
    live, free = np.array([6, 0, 3]), np.array([1, 2, 4, 5, 7])
    assert np.asarray(back.state.buf)[live].tobytes() == np.asarray(state.buf)[live].tobytes()
    np.testing.assert_array_equal(
        jax.random.key_data(back.state.key)[live], jax.random.key_data(state.key)[live]
    )
    # Free slots are not stored: they come back as the template (a fresh state).
    assert not np.asarray(back.state.buf)[free].any()
    assert not np.asarray(back.state.count)[free].any()
    fresh = jax.random.key_data(template().key)
    assert (np.asarray(jax.random.key_data(back.state.key))[free] == fresh).all()


def test_only_live_rows_are_copied_and_written() -> None:
    def file_size(capacity: int, n: int) -> int:
        batch = make_asset_batch(
            stacked(capacity),
            [f"a{i}" for i in range(n)],
            seq=np.zeros(n, np.int64),
            last_ts_ns=np.zeros(n, np.int64),
        )
        section = payload_with(batch)["assets"]
        assert isinstance(section, HostAssets)
        assert [d.shape for d in section.data] == [(n, 16), (n,), (n, 2)]
        return len(pack(payload_with(batch)))

    row = 16 * 8 + 8 + 2 * 4
    # Free slots cost nothing (the capacity's own msgpack integer aside).
    assert abs(file_size(400, 50) - file_size(50, 50)) <= 8
    # Each extra live asset adds its row, its id and 24 bytes of counters.
    grown = file_size(400, 150) - file_size(400, 50)
    assert 100 * (row + 24) < grown <= 100 * (row + 24 + 6)


def reframe(data: bytes, edit: Callable[[int, bytes], bytes]) -> bytes:
    """The file's records re-hashed after ``edit(kind, payload)``: valid digests."""
    reader = RecordReader(io.BytesIO(data), source="t", max_record_bytes=1 << 30)
    writer = RecordWriter()
    out = [writer.preamble()]
    while not reader.ended:
        kind, payload = reader.next()
        out += [bytes(c) for c in writer.record(kind, [edit(kind, payload)])]
    return b"".join(out) + writer.trailer()


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


def test_tampered_index_with_valid_digests_is_malformed() -> None:
    data = pack(
        payload_with(make_asset_batch(stacked(4), ["a", "b"], seq=[1, 2], last_ts_ns=[3, 4]))
    )

    def edit_index(change: dict[str, Any]) -> Callable[[int, bytes], bytes]:
        def edit(kind: int, payload: bytes) -> bytes:
            if kind != KIND_INDEX:
                return payload
            node = msgpack.unpackb(payload, raw=False)
            node.update(change)
            return bytes(msgpack.packb(node, use_bin_type=True))

        return edit

    same_slots = reframe(data, edit_index({"slots": np.array([3, 3], np.int64).tobytes()}))
    with pytest.raises(MalformedSnapshotError, match="slots must be unique"):
        unpack(same_slots, SCHEMA)
    short = reframe(data, edit_index({"seq": np.array([1], np.int64).tobytes()}))
    with pytest.raises(MalformedSnapshotError, match=r"expected int64\[2\]"):
        unpack(short, SCHEMA)

    def cut_data(kind: int, payload: bytes) -> bytes:
        return payload[:-8] if kind == KIND_DATA else payload

    with pytest.raises(MalformedSnapshotError, match="data record of"):
        unpack(reframe(data, cut_data), SCHEMA)


def test_host_restore_keeps_numpy_leaves_with_the_same_bits() -> None:
    state = stacked(8)
    batch = make_asset_batch(state, ["a", "b"], seq=[1, 2], last_ts_ns=[3, 4])
    payload = unpack(pack(payload_with(batch)), SCHEMA)
    on_device = restore_assets(payload, template())
    on_host = restore_assets(payload, template(), host=True)
    assert isinstance(on_host.state.buf, np.ndarray) and isinstance(on_device.state.buf, jax.Array)
    assert on_host.state.buf.tobytes() == np.asarray(on_device.state.buf).tobytes()
    assert on_host.state.count.tobytes() == np.asarray(on_device.state.count).tobytes()
