"""AssetTable: slots, padding to buckets, gather/scatter, growth, restore.

A tiny stand-in predictor keeps these tests fast (the real step takes
minutes to compile): its state is a running sum and a tick counter per
asset, so every row's expected value is known in closed form.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import structlog

from predictor.daemon.assets import AssetLimitError, AssetTable, Part, split_sizes
from predictor.snapshots import make_asset_batch


class Out(NamedTuple):
    total: jax.Array
    mode: jax.Array
    refit_due: jax.Array


class State(NamedTuple):
    total: jax.Array  # sum of y seen
    count: jax.Array  # ticks seen
    refits: jax.Array  # refits run
    last_output: Out


def _step(s: State, y: jax.Array, ts: jax.Array, depth: int) -> tuple[State, Out]:
    del ts
    count = s.count + 1
    out = Out(s.total + y * depth, jnp.asarray(depth % 3, jnp.int64), count % 2 == 0)
    return State(out.total, count, s.refits, out), out


def _refit(s: State) -> State:
    return s._replace(refits=s.refits + s.last_output.refit_due)


class TinyPredictor:
    """The FunctionalPredictor interface the table uses, on a trivial state.

    Every second tick of an asset asks for a refit, which counts it.
    """

    depths = (3, 2)

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.refit_calls = 0
        self.refit_lanes: list[int] = []
        self._batch = {d: jax.jit(jax.vmap(functools.partial(_step, depth=d))) for d in self.depths}
        self._refit = jax.jit(jax.vmap(_refit))

    def cold_rows(self, n: int, first_phase: int = 0) -> State:
        del first_phase
        z = np.zeros(n, np.float64)
        i = np.zeros(n, np.int64)
        return State(z, i, i.copy(), Out(z.copy(), i.copy(), np.zeros(n, bool)))

    def tick_batch(self, states: State, obs: Any, now_ns: int, depth: int) -> tuple[State, Out]:
        self.calls.append(int(obs.y.shape[0]))
        return self._batch[depth](states, obs.y, obs.ts)  # type: ignore[no-any-return]

    def output(self, rows: Out) -> Out:
        return jax.tree.map(np.asarray, rows)  # type: ignore[no-any-return]

    def refit_batch(self, states: State, due: Any, depth: int, *, donate: bool = False) -> State:
        del depth, donate
        if not np.any(due):
            return states
        self.refit_calls += 1
        self.refit_lanes.append(int(np.sum(due)))
        return self._refit(states)  # type: ignore[no-any-return]

    def view(self, rows: State) -> Any:
        class View(NamedTuple):
            fast: State

        return View(rows)


def table(capacity: int = 2, max_assets: int = 100) -> AssetTable:
    return AssetTable(
        TinyPredictor(),  # type: ignore[arg-type]
        capacity=capacity,
        max_assets=max_assets,
        buckets=(2, 8),
        log=structlog.get_logger(),
    )


def test_padding_uses_the_next_bucket_and_discards_pad_lanes() -> None:
    t = table(capacity=4)
    for a in "abc":
        t.add(a)
    res = t.step([2, 0, 1], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5, 5, 5], 0, 3)
    assert t.fp.calls == [8]  # type: ignore[attr-defined]
    assert res.n == 3
    np.testing.assert_array_equal(np.asarray(res.out.total)[:3], [3.0, 6.0, 9.0])
    totals = np.asarray(t.stacked.total)
    np.testing.assert_array_equal(totals[:3], [6.0, 9.0, 3.0])
    assert totals[t.pad_row] == 0.0  # the pad row is never written
    assert int(np.asarray(t.stacked.count)[3]) == 0  # the free slot is untouched
    assert t.fp.refit_calls == 0  # type: ignore[attr-defined]  # nobody is due after one tick
    t.step([2, 0], [1.0, 1.0], [1.0, 1.0], [6, 6], 0, 3)
    assert t.fp.refit_calls == 1  # type: ignore[attr-defined]
    assert t.fp.refit_lanes == [2]  # type: ignore[attr-defined]  # the two due lanes, no pad lane
    np.testing.assert_array_equal(np.asarray(t.stacked.refits)[:3], [1, 0, 1])


def test_growth_doubles_capacity_and_keeps_every_state() -> None:
    t = table(capacity=2)
    rng = np.random.default_rng(0)
    expected: dict[int, float] = {}
    growths = []
    for i in range(11):
        slot = t.add(f"asset{i}")
        growths.append(t.capacity)
        y = float(rng.normal())
        t.step([slot], [y], [y], [1], 0, 2)
        expected[slot] = 2 * y
    assert growths == [2, 2, 4, 4, 8, 8, 8, 8, 16, 16, 16]
    assert t.growths == 3  # O(log n) growths for n assets
    totals = np.asarray(t.stacked.total)
    for slot, value in expected.items():
        assert totals[slot] == value
    assert totals[t.pad_row] == 0.0
    assert len(t.seq) == t.capacity == 16


def test_max_assets_refuses_the_next_asset() -> None:
    t = table(capacity=2, max_assets=3)
    for a in "abc":
        t.add(a)
    assert t.capacity == 3
    with pytest.raises(AssetLimitError):
        t.add("d")


def test_bucket_for_and_oversized_batches() -> None:
    t = table()
    assert [t.bucket_for(n) for n in (1, 2, 3, 8)] == [2, 2, 8, 8]
    with pytest.raises(ValueError, match="largest bucket"):
        t.bucket_for(9)


def test_warmup_touches_no_state() -> None:
    t = table(capacity=4)
    t.add("a")
    t.step([0], [1.5], [1.5], [1], 0, 3)
    before = jax.device_get(t.stacked)
    assert t.warmup() == 4  # 2 buckets x 2 depths
    after = jax.device_get(t.stacked)
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_restore_round_trip_resets_the_pad_row() -> None:
    t = table(capacity=4)
    for a in "xyz":
        t.add(a)
    t.seq[:3] = [5, 6, 7]
    t.last_ts[:3] = [50, 60, 70]
    t.step([0, 1, 2], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1, 1, 1], 0, 3)
    batch = t.to_batch()
    assert batch.capacity == 5  # capacity + the pad row
    # Damage the pad row in the "file": restore must put a cold state back.
    state = jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(batch.state))
    state.total[4] = 99.0
    damaged = make_asset_batch(
        state, list(batch.ids), seq=batch.seq, last_ts_ns=batch.last_ts_ns, slots=batch.slots
    )
    u = table(capacity=2)
    u.restore(damaged)
    assert u.names == ["x", "y", "z"] and u.capacity == 4
    np.testing.assert_array_equal(u.seq[:3], [5, 6, 7])
    np.testing.assert_array_equal(u.last_ts[:3], [50, 60, 70])
    np.testing.assert_array_equal(np.asarray(u.stacked.total)[:3], [3.0, 6.0, 9.0])
    assert float(np.asarray(u.stacked.total)[4]) == 0.0
    assert u.mode_counts(("Standard", "Robust", "Emergency")) == {
        "Standard": 3,
        "Robust": 0,
        "Emergency": 0,
    }


def test_no_compilation_after_warmup_until_growth() -> None:
    events: list[str] = []

    def listener(event: str, duration_secs: float, **_: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    t = table(capacity=6)  # shapes no other test uses
    t.warm_gather_scatter()
    t.warmup()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for a in "abcdef":
            t.add(a)
        for k in range(5):
            t.step([0, 1, 2], [1.0, 2.0, 3.0], [0.0] * 3, [k + 1] * 3, 0, 3)
            t.step([3], [1.0], [1.0], [k + 1], 0, 2)
        assert events == []
        t.add("g")  # growth 6 -> 12: the gather/scatter graphs recompile
        assert t.capacity == 12 and events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize(
    ("n", "buckets", "expected"),
    [
        (1, (1, 8, 64, 512), [1]),
        (7, (1, 8, 64, 512), [7]),  # 1 pad lane of 8 (12%)
        (5, (1, 8, 64, 512), [1, 1, 1, 1, 1]),  # 3 pad lanes of 8 would be 37%
        (100, (1, 8, 64, 512), [64, 8, 8, 8, 8, 1, 1, 1, 1]),
        (1000, (1, 8, 64, 512), [512, 488]),  # 24 pad lanes: 5%
        (1300, (1, 8, 64, 512), [512, 512, 64, 64, 64, 64, 8, 8, 1, 1, 1, 1]),
        (3, (16, 64), [3]),  # nothing smaller than 16: pad
        (70, (16, 64), [64, 6]),
    ],
)
def test_split_sizes_covers_the_round_with_little_padding(
    n: int, buckets: tuple[int, ...], expected: list[int]
) -> None:
    sizes = split_sizes(n, buckets)
    assert sizes == expected and sum(sizes) == n


def test_parts_step_in_parallel_like_one_batch() -> None:
    """Parts on the worker pool give each asset what one batch would, state included."""
    ys = [float(k + 1) for k in range(11)]
    results = {}
    for workers, split in ((1, False), (2, True)):
        t = AssetTable(
            TinyPredictor(),  # type: ignore[arg-type]
            capacity=16,
            max_assets=100,
            buckets=(2, 8),
            log=structlog.get_logger(),
            workers=workers,
        )
        for k in range(11):
            t.add(f"a{k}")
        slots = [t.slot_of(f"a{k}") for k in range(11)]
        for tick in range(3):
            if split:  # 8 + 2 + 1 lanes, out of slot order
                groups = [[3, 4, 5, 6, 7, 8, 9, 10], [1, 2], [0]]
                res = t.step_parts(
                    [
                        Part(g, [ys[i] for i in g], [0.0] * len(g), [tick + 1] * len(g))
                        for g in groups
                    ],
                    0,
                    3,
                )
                totals = {
                    i: float(r.out.total[j])
                    for g, r in zip(groups, res, strict=True)
                    for j, i in enumerate(g)
                }
                assert [r.n for r in res] == [8, 2, 1]
            else:
                r1 = t.step(slots[:8], ys[:8], [0.0] * 8, [tick + 1] * 8, 0, 3)
                r2 = t.step(slots[8:], ys[8:], [0.0] * 3, [tick + 1] * 3, 0, 3)
                totals = {i: float(r1.out.total[i]) for i in range(8)}
                totals |= {8 + j: float(r2.out.total[j]) for j in range(3)}
        results[split] = (totals, np.asarray(t.stacked.total)[:11].copy())
        t.close()
    assert results[True][0] == results[False][0]
    np.testing.assert_array_equal(results[True][1], results[False][1])
    np.testing.assert_array_equal(results[True][1], np.asarray(ys) * 3 * 3)
