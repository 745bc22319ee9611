"""Snapshot codec: bit-exact pytree round trip, layout checks, file verification."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from predictor.config import PredictorConfig
from predictor.errors import IntegrityError
from predictor.snapshots import (
    CHECKSUM_LEN,
    HostKey,
    LayoutMismatchError,
    Limits,
    MalformedSnapshotError,
    SchemaVersionError,
    SnapshotEmptyError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
    build_payload,
    decode_tree,
    decode_untyped,
    encode_tree,
    load_snapshot,
    pack,
    restore_sections,
    save_snapshot,
    to_host,
    unpack,
)

SCHEMA = PredictorConfig().schema_version


class EmptyState(NamedTuple):
    pass


class Inner(NamedTuple):
    w: jax.Array
    counter: jax.Array


class State(NamedTuple):
    buf: jax.Array
    ema: jax.Array
    count: jax.Array
    flag: jax.Array
    key: jax.Array
    raw_key: jax.Array
    inner: Inner
    opt: tuple[EmptyState, dict[str, jax.Array]]
    host: np.ndarray[Any, Any]
    scalar: np.float64
    label: str
    nothing: None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Params:
    a: jax.Array
    b: list[jax.Array]


def _specials() -> np.ndarray[Any, Any]:
    """NaN with a non-default payload, -0.0, +-inf, the smallest subnormal."""
    nan_payload = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]
    return np.array([nan_payload, -0.0, np.inf, -np.inf, 5e-324, 1.0 / 3.0])


def make_state(seed: int = 0, n: int = 128) -> State:
    rng = np.random.default_rng(seed)
    buf = rng.standard_normal(n)
    buf[: len(_specials())] = _specials()
    return State(
        buf=jnp.asarray(buf),
        ema=jnp.asarray(rng.standard_normal()),
        count=jnp.asarray(np.int64(2**40 + seed)),
        flag=jnp.asarray(True),
        key=jax.random.key(seed),
        raw_key=jax.random.PRNGKey(seed + 1),
        inner=Inner(jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(np.int32(-7))),
        opt=(EmptyState(), {"mu": jnp.zeros(5), "nu": jnp.asarray(rng.random(5))}),
        host=rng.integers(0, 2**32, size=(2, 3), dtype=np.uint32),
        scalar=np.float64(rng.standard_normal()),
        label="kernel",
        nothing=None,
    )


def assert_bit_equal(a: Any, b: Any) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for xl, yl in zip(la, lb, strict=True):
        assert type(xl) is type(yl) or (isinstance(xl, jax.Array) and isinstance(yl, jax.Array))
        x, y = xl, yl
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(x) == jax.random.key_impl(y)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if isinstance(x, np.ndarray | np.generic | jax.Array):
            xa, ya = np.asarray(x), np.asarray(y)
            assert xa.dtype == ya.dtype and xa.shape == ya.shape
            assert xa.tobytes() == ya.tobytes()
        else:
            assert x == y


def payload_of(state: State, schema: str = SCHEMA) -> dict[str, Any]:
    return build_payload(
        config=PredictorConfig(),
        schema_version=schema,
        global_state=state,
        telemetry={"kurtosis": 3.25, "dgm_entropy": 0.5, "adaptive_threshold": 4.0},
        flags={"degraded_inference": False, "emergency": True},
        kernels={"A": state.inner, "B": None, "C": state.opt, "D": {"x": state.buf}},
    )


def test_round_trip_is_bit_exact_through_msgpack() -> None:
    state = make_state(3)
    node = encode_tree(to_host(state))
    back = decode_tree(msgpack.unpackb(msgpack.packb(node), raw=False), make_state(99))
    assert_bit_equal(back, state)
    # The NaN payload survived, not just "some NaN".
    assert np.asarray(back.buf).view(np.uint64)[0] == 0x7FF8_0000_DEAD_BEEF
    assert np.signbit(np.asarray(back.buf)[1])
    # Restored leaves take the template's kinds.
    assert isinstance(back.buf, jax.Array) and isinstance(back.host, np.ndarray)
    assert back.host.flags.writeable and isinstance(back.scalar, np.float64)
    # Same placement as a fresh state: uncommitted, so jitted steps do not recompile.
    assert not back.buf.committed and not back.key.committed
    committed = make_state(99)._replace(buf=jax.device_put(jnp.zeros(128), jax.devices()[0]))
    assert decode_tree(node, committed).buf.committed


def test_typed_prng_key_survives_and_keeps_drawing_the_same_numbers() -> None:
    state = make_state(5)
    blob = pack(payload_of(state))
    payload = unpack(blob, SCHEMA)
    back = restore_sections(payload, {"global": make_state(0)})["global"]
    assert jax.dtypes.issubdtype(back.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.normal(back.key, (8,)), jax.random.normal(state.key, (8,))
    )
    np.testing.assert_array_equal(
        jax.random.uniform(back.raw_key, (4,)), jax.random.uniform(state.raw_key, (4,))
    )


def test_payload_is_a_private_host_copy_taken_at_build_time() -> None:
    host_buf = np.arange(4.0)
    state = {"dev": jnp.arange(3.0), "host": host_buf}
    copied = to_host(state)
    assert copied["dev"].flags.owndata and copied["host"] is not host_buf
    payload = build_payload(
        config={"schema_version": SCHEMA},
        global_state=state,
        telemetry={},
        flags={},
        kernels={"A": None, "B": None, "C": None, "D": None},
    )
    host_buf[:] = -1.0  # the caller keeps mutating its state after the cut
    back = restore_sections(unpack(pack(payload), SCHEMA), {"global": state})["global"]
    assert back["host"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_registered_pytree_node_and_host_key_round_trip() -> None:
    params = Params(jnp.arange(3.0), [jnp.ones(2), jnp.zeros((1, 2))])
    hk = HostKey("threefry2x32", np.array([1, 2], dtype=np.uint32))
    node = encode_tree({"p": params, "k": hk})
    back = decode_tree(node, {"p": Params(jnp.zeros(3), [jnp.zeros(2), jnp.ones((1, 2))]), "k": hk})
    assert_bit_equal(back["p"], params)
    assert back["k"].impl == hk.impl and back["k"].data.tobytes() == hk.data.tobytes()
    assert decode_untyped(node)["p"][0].tolist() == [0.0, 1.0, 2.0]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(["f8", "f4", "i8", "i4", "u4", "u1", "?", "c16", ">f8", ">i4"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    )
)
def test_any_numeric_array_round_trips_bit_exactly(arr: np.ndarray[Any, Any]) -> None:
    packed = msgpack.packb(encode_tree(arr))
    back = decode_tree(msgpack.unpackb(packed, raw=False), np.zeros(arr.shape, arr.dtype))
    assert back.shape == arr.shape
    assert back.dtype == arr.dtype.newbyteorder("<")
    assert back.tobytes() == arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def test_encoder_refuses_what_it_cannot_restore_losslessly() -> None:
    with pytest.raises(TypeError, match=r"state\.x.*numeric"):
        encode_tree({"x": np.array([object()], dtype=object)})
    with pytest.raises(TypeError, match="keys must be strings"):
        encode_tree({1: np.zeros(1)})
    with pytest.raises(TypeError, match="keys must be strings"):
        encode_tree({"__t__": 1})
    with pytest.raises(TypeError, match="64 bits"):
        encode_tree(2**70)


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (lambda s: s._replace(buf=jnp.zeros(64)), "global.buf", "shape [128], expected [64]"),
        (
            lambda s: s._replace(count=jnp.asarray(np.int32(0))),
            "global.count",
            "dtype <i8, expected <i4",
        ),
        (
            lambda s: s._replace(key=jax.random.key(0, impl="rbg")),
            "global.key",
            "impl 'threefry2x32', expected 'rbg'",
        ),
        (lambda s: s._replace(raw_key=jax.random.key(0)), "global.raw_key", "typed PRNG key"),
        (
            lambda s: s._replace(opt=(EmptyState(), {"mu": jnp.zeros(5)})),
            "global.opt[1]",
            "unexpected nu",
        ),
        (
            lambda s: s._replace(opt=(EmptyState(), {**s.opt[1], "v": jnp.zeros(5)})),
            "global.opt[1]",
            "missing v",
        ),
        (lambda s: s._replace(label=3), "global.label", "expected int"),
        (lambda s: s._replace(nothing=jnp.zeros(1)), "global.nothing", "expected an array"),
    ],
)
def test_layout_mismatch_names_the_path(mutate: Any, path: str, reason: str) -> None:
    payload = unpack(pack(payload_of(make_state(1))), SCHEMA)
    template = mutate(make_state(2))
    with pytest.raises(LayoutMismatchError) as info:
        restore_sections(payload, {"global": template})
    assert info.value.path == path
    assert reason in str(info.value)


def test_missing_or_extra_namedtuple_field_is_refused() -> None:
    class Smaller(NamedTuple):
        w: jax.Array

    class Larger(NamedTuple):
        w: jax.Array
        counter: jax.Array
        extra: jax.Array

    payload = unpack(pack(payload_of(make_state(1))), SCHEMA)
    with pytest.raises(LayoutMismatchError, match=r"kernels\.A: unexpected counter"):
        restore_sections(
            payload, {"kernels": {**_kernel_templates(), "A": Smaller(jnp.zeros((3, 4)))}}
        )
    larger = Larger(jnp.zeros((3, 4)), jnp.asarray(np.int32(0)), jnp.zeros(2))
    with pytest.raises(LayoutMismatchError, match=r"kernels\.A: missing extra"):
        restore_sections(payload, {"kernels": {**_kernel_templates(), "A": larger}})


def _kernel_templates() -> dict[str, Any]:
    s = make_state(0)
    return {"A": s.inner, "B": None, "C": s.opt, "D": {"x": s.buf}}


def test_layout_error_lists_changed_layout_fields_of_the_config() -> None:
    payload = unpack(pack(payload_of(make_state(1))), SCHEMA)
    current = PredictorConfig(wtmm_buffer_size=256, epsilon=0.3)
    with pytest.raises(LayoutMismatchError) as info:
        restore_sections(payload, {"global": make_state(0, n=256)}, config=current)
    assert "wtmm_buffer_size: 128 -> 256" in str(info.value)
    assert "epsilon" not in str(info.value)  # hot-reloadable: no layout change


def test_all_sections_restore_together() -> None:
    state = make_state(4)
    payload = unpack(pack(payload_of(state)), SCHEMA)
    out = restore_sections(
        payload,
        {
            "global": make_state(0),
            "kernels": _kernel_templates(),
            "telemetry": {"kurtosis": 0.0, "dgm_entropy": 0.0, "adaptive_threshold": 0.0},
            "flags": {"degraded_inference": True, "emergency": False},
        },
    )
    assert_bit_equal(out["kernels"]["A"], state.inner)
    assert out["telemetry"]["kurtosis"] == 3.25 and out["flags"]["emergency"] is True
    assert payload["config"] == PredictorConfig().to_dict()


# ------------------------------------------------------------ verification ---
@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    path = tmp_path / "snap.msgpack"
    save_snapshot(path, payload_of(make_state(7)))
    return path


def parse_records(data: bytes) -> list[tuple[int, bytes]]:
    """Independent reader of the documented format: (kind, payload) per record."""
    assert data[:8] == b"\xc1PSNAP\r\n"
    assert struct.unpack_from("<I", data, 8)[0] == 2
    assert struct.unpack_from("<I", data, 12)[0] == zlib.crc32(data[:12])
    digest = hashlib.sha256(data[:16]).digest()
    off, records = 16, []
    while True:
        kind, _, _, number, length = struct.unpack_from("<BBHIQ", data, off)
        assert struct.unpack_from("<I", data, off + 16)[0] == zlib.crc32(data[off : off + 16])
        assert number == len(records)
        header, payload = data[off : off + 20], data[off + 20 : off + 20 + length]
        digest = hashlib.sha256(digest + header + payload).digest()
        assert data[off + 20 + length : off + 52 + length] == digest
        records.append((kind, payload))
        off += 52 + length
        if kind == 4:
            break
    assert data[off:] == digest.hex().encode()
    return records


def test_file_layout_is_hashed_records_then_hex_sha256(snapshot_file: Path) -> None:
    data = snapshot_file.read_bytes()
    records = parse_records(data)
    assert [k for k, _ in records] == [1, 4]  # META, END: no assets section
    meta = msgpack.unpackb(records[0][1], raw=False)
    assert meta["schema_version"] == SCHEMA and "assets" not in meta
    assert msgpack.unpackb(records[1][1]) == {"records": 1}
    assert_bit_equal(
        restore_sections(load_snapshot(snapshot_file, SCHEMA), {"global": make_state(0)})["global"],
        make_state(7),
    )


def test_format_one_files_are_still_read(tmp_path: Path) -> None:
    """A file of the previous format (msgpack body + hex SHA-256) loads bit-exactly."""
    payload = payload_of(make_state(3))
    body = msgpack.packb(payload, use_bin_type=True)
    old = tmp_path / "old.msgpack"
    old.write_bytes(body + hashlib.sha256(body).hexdigest().encode())
    got = restore_sections(load_snapshot(old, SCHEMA), {"global": make_state(0)})["global"]
    assert_bit_equal(got, make_state(3))
    flipped = bytearray(old.read_bytes())
    flipped[len(flipped) // 3] ^= 4
    old.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        load_snapshot(old, SCHEMA)


def test_every_single_bit_flip_is_detected(snapshot_file: Path, tmp_path: Path) -> None:
    data = snapshot_file.read_bytes()
    rng = random.Random(20240607)
    positions = rng.sample(range(len(data) * 8), 300)
    # The preamble, a record header, a digest and the trailer are hit too.
    positions[:4] = [0, 13 * 8 + 1, (16 + 9) * 8 + 3, (len(data) - 1) * 8 + 2]
    damaged = tmp_path / "damaged.msgpack"
    kinds: dict[str, int] = {}
    for bit in positions:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        damaged.write_bytes(flipped)
        with pytest.raises(IntegrityError) as info:
            load_snapshot(damaged, SCHEMA)
        kinds[type(info.value).__name__] = kinds.get(type(info.value).__name__, 0) + 1
        assert "checksum mismatch" in str(info.value) or "truncated" in str(info.value)
    print(f"300 bit flips in a {len(data)}-byte snapshot refused as {kinds}")


def test_truncated_file_is_refused_as_truncated(snapshot_file: Path, tmp_path: Path) -> None:
    data = snapshot_file.read_bytes()
    cut = tmp_path / "cut.msgpack"
    cuts = {1, 10, 16, 20, 36, len(data) // 2, len(data) - CHECKSUM_LEN, len(data) - 1}
    for keep in sorted(cuts | set(random.Random(3).sample(range(1, len(data)), 40))):
        cut.write_bytes(data[:keep])
        with pytest.raises(SnapshotTruncatedError, match="truncated"):
            load_snapshot(cut, SCHEMA)
    cut.write_bytes(data + b"\n")
    with pytest.raises(IntegrityError, match="after the trailer"):
        load_snapshot(cut, SCHEMA)


def test_empty_file_is_refused_as_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.msgpack"
    empty.write_bytes(b"")
    with pytest.raises(SnapshotEmptyError, match="empty"):
        load_snapshot(empty, SCHEMA)


def test_wrong_schema_with_valid_checksum_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "old.msgpack"
    save_snapshot(path, payload_of(make_state(1), schema="0.9"))
    with pytest.raises(SchemaVersionError) as info:
        load_snapshot(path, SCHEMA)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, IntegrityError)
    assert "snapshot='0.9'" in str(info.value) and f"current={SCHEMA!r}" in str(info.value)


def test_too_large_file_is_refused_before_reading(tmp_path: Path, snapshot_file: Path) -> None:
    huge = tmp_path / "huge.msgpack"
    with huge.open("wb") as fh:  # sparse: 1 GiB + 1 byte without using the disk
        fh.truncate((1 << 30) + 1)
    # Not a format-2 file: read whole as format 1, which is bounded at 1 GiB.
    with pytest.raises(SnapshotTooLargeError, match="exceeds the limit of 1073741824 bytes"):
        load_snapshot(huge, SCHEMA)
    # A format-2 record above the per-record bound is refused before it is read.
    with pytest.raises(SnapshotTooLargeError, match="per record"):
        load_snapshot(snapshot_file, SCHEMA, limits=Limits(max_record_bytes=64))
    small = Limits(max_bytes=snapshot_file.stat().st_size - 1)
    with pytest.raises(SnapshotTooLargeError):
        load_snapshot(snapshot_file, SCHEMA, limits=small)
    with pytest.raises(SnapshotTooLargeError):
        unpack(snapshot_file.read_bytes(), SCHEMA, limits=small)


def test_valid_checksum_over_garbage_is_malformed_not_loaded(tmp_path: Path) -> None:
    def sealed(body: bytes) -> bytes:
        return body + hashlib.sha256(body).hexdigest().encode()

    with pytest.raises(MalformedSnapshotError, match="msgpack invalid"):
        unpack(sealed(b"\x92\xc1" * 10), SCHEMA)
    with pytest.raises(MalformedSnapshotError, match="missing"):
        unpack(sealed(msgpack.packb({"schema_version": SCHEMA})), SCHEMA)
    # Extension types (msgpack timestamps included) are not allowed.
    ext = msgpack.packb({"schema_version": SCHEMA, "x": msgpack.ExtType(1, b"abc")})
    with pytest.raises(MalformedSnapshotError):
        unpack(sealed(ext), SCHEMA)
    # A string longer than the limit is refused while unpacking.
    long = msgpack.packb({"schema_version": SCHEMA, "s": "x" * 5000})
    with pytest.raises(MalformedSnapshotError):
        unpack(sealed(long), SCHEMA, limits=Limits(max_str_len=1000))
    bad_array = dict(payload_of(make_state(1)))
    bad_array["global"] = {"__t__": "nd", "dtype": "|O", "shape": [1], "data": b"\0" * 8}
    payload = unpack(sealed(msgpack.packb(bad_array)), SCHEMA)
    with pytest.raises(MalformedSnapshotError, match="not allowed"):
        restore_sections(payload, {"global": np.zeros(1)})


def test_no_pickle_anywhere() -> None:
    src = Path(__file__).parents[1] / "predictor" / "snapshots"
    for py in src.glob("*.py"):
        text = py.read_text()
        assert "pickle" not in text and "allow_pickle" not in text, py.name
    assert os.fspath(src).endswith("snapshots")
