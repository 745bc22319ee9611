"""Snapshots that scale with the table: 100,000 assets, bounded memory, live rows only.

The per-asset state here is small (400 bytes) so that the test stays fast;
``bench/snapshots.py --assets 100000`` does the same with the real state.
Memory is measured with ``tracemalloc`` (numpy registers its buffers with
it), so the bounds count every array and msgpack object the snapshot code
allocates.
"""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from predictor.errors import IntegrityError
from predictor.snapshots import (
    LayoutMismatchError,
    build_payload,
    load_snapshot,
    make_asset_batch,
    pack,
    restore_assets,
    save_snapshot,
    unpack,
)

SCHEMA = "scale-1"
MIB = 1 << 20


class Row(NamedTuple):
    buf: Any  # float64[48]
    count: Any  # int64
    flags: Any  # uint8[8]


def template() -> Row:
    return Row(np.full(48, -1.5), np.int64(-7), np.full(8, 9, np.uint8))


def stacked(capacity: int, n: int, seed: int = 0) -> Row:
    """Capacity rows: the first ``n`` random (live), the rest the template's."""
    rng = np.random.default_rng(seed)
    t = template()
    buf = np.empty((capacity, 48))
    buf[:] = t.buf
    buf[:n] = rng.standard_normal((n, 48))
    buf[:n:1000, 0] = np.nan  # NaNs and -0.0 must come back bit for bit
    buf[1:n:1000, 1] = -0.0
    count = np.full(capacity, t.count)
    count[:n] = rng.integers(-(2**62), 2**62, n)
    flags = np.empty((capacity, 8), np.uint8)
    flags[:] = t.flags
    flags[:n] = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    return Row(buf, count, flags)


def payload_for(state: Row, n: int) -> dict[str, Any]:
    batch = make_asset_batch(
        state,
        [f"asset-{i:06d}" for i in range(n)],
        seq=np.arange(n, dtype=np.int64) * 3,
        last_ts_ns=np.arange(n, dtype=np.int64) + 1_700_000_000_000_000_000,
    )
    return build_payload(
        config={"schema_version": SCHEMA},
        global_state={"ticks_total": 12345},
        telemetry={},
        flags={},
        kernels=dict.fromkeys("ABCD"),
        assets=batch,
    )


def nbytes(tree: Row) -> int:
    return sum(np.asarray(x).nbytes for x in tree)


def test_hundred_thousand_assets_round_trip_bit_exactly_in_bounded_memory(
    tmp_path: Path,
) -> None:
    capacity, n = 131_072, 100_000
    state = stacked(capacity, n)
    live_bytes = n * 400
    path = tmp_path / "big.snapshot"

    tracemalloc.start()
    try:
        payload = payload_for(state, n)
        save_snapshot(path, payload, record_bytes=1 * MIB)
        _, save_peak = tracemalloc.get_traced_memory()
        del payload
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        batch = restore_assets(load_snapshot(path, SCHEMA), template())
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    out_bytes = nbytes(batch.state)
    print(
        f"{n} assets, capacity {capacity}: file {size / MIB:.1f} MiB, "
        f"save peak {save_peak / MIB:.1f} MiB, load peak {(load_peak - base) / MIB:.1f} MiB "
        f"for {out_bytes / MIB:.1f} MiB restored"
    )
    # Save: the private copy of the live rows, plus records and ids.
    assert save_peak <= live_bytes + 16 * MIB
    # Load: the restored arrays, plus one record at a time and the ids
    # (a whole-file read followed by a decode would need twice the file).
    assert load_peak - base <= out_bytes + 24 * MIB
    assert size < live_bytes + 4 * MIB  # live rows, ids and counters only

    assert batch.capacity == capacity and len(batch.ids) == n
    assert batch.ids[12345] == "asset-012345" and batch.seq[99_999] == 299_997
    for restored, original in zip(batch.state, state, strict=True):
        got, want = np.asarray(restored), np.asarray(original)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()  # free slots: the template's rows


def test_half_empty_table_file_is_proportional_to_live_assets(tmp_path: Path) -> None:
    capacity = 20_000
    sizes = {}
    for n in (5_000, 10_000, 20_000):
        path = tmp_path / f"{n}.snapshot"
        save_snapshot(path, payload_for(stacked(capacity, n), n))
        sizes[n] = path.stat().st_size
    print(f"capacity {capacity}: file bytes by live assets {sizes}")
    assert 0.49 <= sizes[10_000] / sizes[20_000] <= 0.51
    assert 0.24 <= sizes[5_000] / sizes[20_000] <= 0.26
    per_asset = (sizes[20_000] - sizes[10_000]) / 10_000
    assert 400 + 24 < per_asset < 400 + 24 + 16  # row, counters, id


def test_a_bit_flip_in_every_byte_and_every_cut_of_a_multi_record_file_is_refused() -> None:
    data = pack(payload_for(stacked(24, 16), 16), record_bytes=1024)
    assert 6_000 < len(data) < 12_000
    rng = random.Random(11)
    refused = 0
    for byte in range(len(data)):
        flipped = bytearray(data)
        flipped[byte] ^= 1 << rng.randrange(8)
        with pytest.raises(IntegrityError):
            unpack(bytes(flipped), SCHEMA)
        refused += 1
    for keep in range(len(data)):
        with pytest.raises(IntegrityError):
            unpack(data[:keep] if keep else b"", SCHEMA)
    print(f"{refused} single-bit flips and {len(data)} cuts of a {len(data)}-byte file refused")


def test_file_replaced_between_verification_and_restore_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.snapshot"
    save_snapshot(path, payload_for(stacked(64, 50), 50), record_bytes=4096)
    payload = load_snapshot(path, SCHEMA)
    save_snapshot(path, payload_for(stacked(64, 50, seed=1), 50), record_bytes=4096)
    with pytest.raises(IntegrityError, match="changed since it was verified"):
        restore_assets(payload, template())


def test_layout_change_is_named_and_empty_table_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.snapshot"
    save_snapshot(path, payload_for(stacked(16, 10), 10))
    payload = load_snapshot(path, SCHEMA)
    wider = template()._replace(buf=np.zeros(64))
    with pytest.raises(LayoutMismatchError) as info:
        restore_assets(payload, wider)
    assert info.value.path == "assets.state.buf" and "[16, 48], expected [16, 64]" in str(
        info.value
    )
    other_dtype = template()._replace(count=np.int32(0))
    with pytest.raises(LayoutMismatchError, match="dtype <i8, expected <i4"):
        restore_assets(payload, other_dtype)
    save_snapshot(path, payload_for(stacked(16, 0), 0))
    empty = restore_assets(load_snapshot(path, SCHEMA), template())
    assert empty.ids == () and np.asarray(empty.state.count).tolist() == [-7] * 16


def test_random_record_sizes_round_trip(tmp_path: Path) -> None:
    rng = random.Random(5)
    state = stacked(300, 257, seed=3)
    for _ in range(5):
        record_bytes = rng.choice([1, 100, 401, 4096, 1 << 20])
        back = restore_assets(
            unpack(pack(payload_for(state, 257), record_bytes=record_bytes), SCHEMA), template()
        )
        for got, want in zip(back.state, state, strict=True):
            assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
