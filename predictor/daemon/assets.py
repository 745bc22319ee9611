"""Asset table: asset id -> slot of one stacked, packed state on the device.

Every asset's state lives in row ``slot`` of four stacked arrays (a
``PackedState``: the fast and fit parts, each a float64 and an int64 row;
leading axis = slot). The table has ``capacity + 1`` rows: row
``capacity`` is the *pad row*, a cold state that pads a batch up to its
bucket and is never written (so padded lanes compute on a valid state and
their results are discarded). Slot ``s`` refits when its tick count is
congruent to ``-s`` modulo ``refit_interval``: the refits of a round are
spread over the slots instead of falling on the same tick.

A batched step is a few jitted calls with fixed shapes:

* ``gather(stacked, idx)``: rows ``idx`` (length B = the bucket; padded
  with the pad row's index) -> B rows;
* ``FunctionalPredictor.tick_batch`` on those rows; its outputs are copied
  to the host, and only then, if a lane is due, ``refit_batch`` is
  dispatched, so the refits run while the caller publishes;
* ``scatter(stacked, sidx, new)``: rows written back in place (``stacked``
  donated); padded lanes carry the index ``capacity + 1``, one past the last
  row, which ``mode="drop"`` discards.

``step_parts`` steps several disjoint groups of assets of one round: the
gathers and scatters run on the calling thread (the scatters donate the
stacked state, so they are sequential), the steps of the parts one after
another by default (``workers = 1``). With the vmapped tick, XLA already
spreads a large part over the cores; two vmapped ticks dispatched from two
threads at once were seen to wait on each other forever (1,000 assets, two
parts of 512 lanes), so a pool of ``workers > 1`` threads is opt-in.
``split_sizes`` cuts a round into parts sized to the buckets, so a round of
100 assets runs as 64 + 4 x 8 + 4 x 1 lanes rather than one batch of 512.

Shapes depend only on B and the capacity, so after ``warmup`` (every bucket
x every depth) nothing compiles until the capacity grows. Growth doubles
the capacity (at least), so n assets cause O(log n) growths, each logged
with its duration, and re-compiles the gather/scatter graphs (not the
step graphs, which depend on B only).

Host-side metadata per slot (numpy, int64): ``seq`` (the last published
sequence number of the asset, 0 before its first tick), ``last_ts`` (the
last tick's timestamp, Unix ns) and ``last_mode`` (mode code of the last
prediction, -1 before it). Slots are always ``0 .. len - 1``: ``forget``
moves the asset of the last slot into the freed one (its row, with the
refit phase it carries, and its metadata) and resets the last slot to the
cold state of a new asset there, which the next new asset takes. A
snapshot stores the stacked state as it is (``capacity + 1`` rows, the pad
row included) with ids, slots, seq and last_ts
(``predictor.snapshots.assets``).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np
from structlog.typing import FilteringBoundLogger

from predictor.core.functional import FunctionalPredictor, make_obs
from predictor.core.state import AssetState, PackedState, StepOutput
from predictor.snapshots import AssetBatch, make_asset_batch

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
Index = np.ndarray[Any, np.dtype[np.int32]]


#: Largest share of a part's lanes that may be padding before the part is
#: cut into smaller buckets instead (``split_sizes``).
MAX_PAD_SHARE = 0.25


def split_sizes(n: int, buckets: Sequence[int]) -> list[int]:
    """Real-lane counts of the parts that step ``n`` assets, largest first.

    Repeatedly: if the smallest bucket holding the rest pads it by at most
    ``MAX_PAD_SHARE`` of the rest (or no smaller bucket exists), the rest is
    one part; otherwise a full part of the largest bucket below the rest
    is cut off. ``sum(result) == n``.
    """
    sizes: list[int] = []
    rest = n
    while rest > 0:
        i = bisect.bisect_left(buckets, rest)
        if i == len(buckets):
            take = buckets[-1]
        elif i == 0 or buckets[i] - rest <= MAX_PAD_SHARE * rest:
            take = rest
        else:
            take = buckets[i - 1]
        sizes.append(take)
        rest -= take
    return sizes


class Part(NamedTuple):
    """One group of distinct assets of a round: slots and their ticks."""

    slots: Sequence[int]
    y: Sequence[float]
    ref: Sequence[float]
    ts: Sequence[int]


class _Padded(NamedTuple):
    idx: Index  # gather rows (pad row for padded lanes)
    sidx: Index  # scatter rows (capacity + 1, dropped, for padded lanes)
    ys: FloatArray
    refs: FloatArray
    tss: IntArray
    n: int


class Released(NamedTuple):
    """What ``AssetTable.release`` did: the freed slot, and the asset moved into it.

    ``moved`` is None when the released asset held the last slot; otherwise
    ``moved`` left slot ``last`` (now free) for slot ``slot``.
    """

    slot: int
    last: int
    moved: str | None


class AssetLimitError(RuntimeError):
    """The table holds ``max_assets`` assets: a new asset id is refused."""


def _gather(stacked: PackedState, idx: jax.Array) -> PackedState:
    """Rows ``idx`` of every leaf (``idx`` in ``[0, capacity]``)."""
    return jax.tree.map(lambda x: x[idx], stacked)  # type: ignore[no-any-return]


def _scatter(stacked: PackedState, idx: jax.Array, rows: PackedState) -> PackedState:
    """Write ``rows`` back at ``idx``; an index past the last row is dropped."""
    return jax.tree.map(  # type: ignore[no-any-return]
        lambda x, r: x.at[idx].set(r, mode="drop"), stacked, rows
    )


_GATHER = jax.jit(_gather)
_SCATTER = jax.jit(_scatter, donate_argnums=(0,))


class StepResult:
    """Host copy of one batched step: the outputs of the ``n`` real lanes.

    ``out`` holds numpy arrays with leading axis B (the bucket); only the
    first ``n`` rows are real. ``latency_ns`` is the wall time of the jitted
    step including the device -> host copy of its outputs
    (``time.perf_counter_ns``).
    """

    __slots__ = ("latency_ns", "n", "out")

    def __init__(self, out: StepOutput, n: int, latency_ns: int) -> None:
        self.out = out
        self.n = n
        self.latency_ns = latency_ns


class AssetTable:
    """Asset ids, slots and the stacked state; see the module docstring.

    ``buckets`` are the padded batch sizes (increasing); a batch larger than
    the last bucket is the caller's to split.
    """

    def __init__(
        self,
        fp: FunctionalPredictor,
        *,
        capacity: int,
        max_assets: int,
        buckets: Sequence[int],
        log: FilteringBoundLogger,
        workers: int = 1,
    ) -> None:
        if capacity < 1 or max_assets < 1:
            raise ValueError("capacity and max_assets must be >= 1")
        if not buckets or any(a >= b for a, b in itertools.pairwise(buckets)):
            raise ValueError(f"buckets must be strictly increasing: {buckets}")
        self.fp = fp
        self.max_assets = max_assets
        self.buckets = tuple(int(b) for b in buckets)
        self.log = log
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="step") if workers > 1 else None
        self.capacity = min(capacity, max_assets)
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.seq: IntArray = np.zeros(self.capacity, np.int64)
        self.last_ts: IntArray = np.zeros(self.capacity, np.int64)
        self.last_mode: IntArray = np.full(self.capacity, -1, np.int64)
        self.stacked: PackedState = jax.device_put(fp.cold_rows(self.capacity + 1))
        self.growths = 0
        #: True while ``grow`` runs (its compilations are expected).
        self.compiling = False

    # --- slots -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    @property
    def pad_row(self) -> int:
        """Index of the pad row (a cold state, never written)."""
        return self.capacity

    def slot_of(self, asset: str) -> int | None:
        """Slot of ``asset``, or None if unknown."""
        return self.ids.get(asset)

    def add(self, asset: str) -> int:
        """Slot of a new asset (grows the table when full); ``AssetLimitError`` beyond the limit."""
        slot = len(self.names)
        if slot >= self.max_assets:
            raise AssetLimitError(f"asset table full ({self.max_assets} assets)")
        if slot >= self.capacity:
            self.grow(slot + 1)
        self.ids[asset] = slot
        self.names.append(asset)
        return slot

    def forget(self, asset: str) -> bool:
        """Drop ``asset`` (``release``); False if the table does not hold it."""
        return self.release(asset) is not None

    def release(self, asset: str) -> Released | None:
        """Drop ``asset`` and keep the slots contiguous (see the module docstring).

        Two scatters of the smallest bucket's shape (compiled by
        ``warm_gather_scatter``, so nothing compiles): the last slot's row
        into the freed slot, then a cold row (phase ``last``) into the last
        slot. Returns None for an unknown asset.
        """
        slot = self.ids.pop(asset, None)
        if slot is None:
            return None
        last = len(self.names) - 1
        b = self.buckets[0]
        drop = np.full(b, self.capacity + 1, np.int32)
        moved = None
        if slot != last:
            moved = self.names[last]
            idx = np.full(b, self.pad_row, np.int32)
            idx[0] = last
            rows = _GATHER(self.stacked, idx)
            sidx = drop.copy()
            sidx[0] = slot
            self.stacked = _SCATTER(self.stacked, sidx, rows)
            self.names[slot] = moved
            self.ids[moved] = slot
            for meta in (self.seq, self.last_ts, self.last_mode):
                meta[slot] = meta[last]
        sidx = drop.copy()
        sidx[0] = last
        self.stacked = _SCATTER(self.stacked, sidx, self.fp.cold_rows(b, first_phase=last))
        self.names.pop()
        self.seq[last] = 0
        self.last_ts[last] = 0
        self.last_mode[last] = -1
        return Released(slot, last, moved)

    def grow(self, needed: int) -> None:
        """Capacity ``max(needed, 2 * capacity)`` (capped at ``max_assets``), states kept."""
        old = self.capacity
        new = min(max(needed, 2 * old), self.max_assets)
        if new <= old:
            return
        start = time.perf_counter()
        n_live = len(self.names)
        # On the host: eager device ops would compile once per leaf and shape.
        host = jax.device_get(self.stacked)
        rows = self.fp.cold_rows(new + 1)
        rows = jax.tree.map(_copy_head(n_live), rows, host)
        self.stacked = jax.device_put(rows)
        self.seq = _resize(self.seq, new, 0)
        self.last_ts = _resize(self.last_ts, new, 0)
        self.last_mode = _resize(self.last_mode, new, -1)
        self.capacity = new
        self.growths += 1
        self.compiling = True
        try:
            self.warm_gather_scatter()
        finally:
            self.compiling = False
        self.log.info(
            "asset_table_grown",
            old_capacity=old,
            new_capacity=new,
            assets=n_live,
            duration_s=round(time.perf_counter() - start, 6),
        )

    def bucket_for(self, n: int) -> int:
        """Smallest bucket >= n (``ValueError`` if n exceeds the largest)."""
        i = bisect.bisect_left(self.buckets, n)
        if i == len(self.buckets):
            raise ValueError(f"batch of {n} exceeds the largest bucket {self.buckets[-1]}")
        return self.buckets[i]

    # --- stepping --------------------------------------------------------------
    def step(
        self,
        slots: Sequence[int],
        y: Sequence[float],
        ref: Sequence[float],
        ts: Sequence[int],
        now_ns: int,
        depth: int,
    ) -> StepResult:
        """One jitted step of the assets in ``slots`` (distinct), padded to a bucket."""
        return self.step_parts([Part(slots, y, ref, ts)], now_ns, depth)[0]

    def step_parts(self, parts: Sequence[Part], now_ns: int, depth: int) -> list[StepResult]:
        """Step disjoint parts of one round, in parallel on the worker pool.

        The slots of all parts together must be distinct. Results are in
        the order of ``parts``; each part's ``latency_ns`` is its own.
        """
        padded = [self._pad(p) for p in parts]
        return self._run(padded, now_ns, depth)

    def _pad(self, part: Part) -> _Padded:
        n = len(part.slots)
        b = self.bucket_for(n)
        idx = np.full(b, self.pad_row, np.int32)
        idx[:n] = part.slots
        sidx = np.full(b, self.capacity + 1, np.int32)
        sidx[:n] = part.slots
        ys = np.zeros(b, np.float64)
        ys[:n] = part.y
        refs = np.zeros(b, np.float64)
        refs[:n] = part.ref
        tss = np.ones(b, np.int64)
        tss[:n] = part.ts
        return _Padded(idx, sidx, ys, refs, tss, n)

    def _run(self, padded: Sequence[_Padded], now_ns: int, depth: int) -> list[StepResult]:
        rows = [_GATHER(self.stacked, p.idx) for p in padded]

        def run(i: int) -> tuple[PackedState, StepResult]:
            p = padded[i]
            start = time.perf_counter_ns()
            obs = make_obs(p.ys, p.refs, p.tss)
            new, out_rows = self.fp.tick_batch(rows[i], obs, now_ns, depth)
            host = self.fp.output(jax.device_get(out_rows))
            due = np.asarray(host.refit_due).copy()
            due[p.n :] = False  # pad lanes are discarded: never refit them
            # Dispatched after the outputs are on the host: it runs while they are published.
            new = self.fp.refit_batch(new, due, depth, donate=True)  # gathered rows: ours
            return new, StepResult(host, p.n, time.perf_counter_ns() - start)

        if self._pool is None or len(padded) == 1:
            done = [run(i) for i in range(len(padded))]
        else:
            done = list(self._pool.map(run, range(len(padded))))
        for p, (new, _) in zip(padded, done, strict=True):
            self.stacked = _SCATTER(self.stacked, p.sidx, new)
        return [res for _, res in done]

    def close(self) -> None:
        """Stop the step worker threads (idle between rounds)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def warm_gather_scatter(self) -> None:
        """Compile gather and scatter for every bucket at the current capacity."""
        for b in self.buckets:
            idx = np.full(b, self.pad_row, np.int32)
            rows = _GATHER(self.stacked, idx)
            sidx = np.full(b, self.capacity + 1, np.int32)
            self.stacked = _SCATTER(self.stacked, sidx, rows)
        _ready(self.stacked)

    def warmup(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Run every bucket x depth once on pad lanes only (no state changes).

        ``progress(done, total)`` is called after each graph. Returns the
        number of graphs exercised.
        """
        total = len(self.buckets) * len(self.fp.depths)
        done = 0
        for b in self.buckets:
            idx = np.full(b, self.pad_row, np.int32)
            sidx = np.full(b, self.capacity + 1, np.int32)
            ys = np.zeros(b, np.float64)
            pad_only = _Padded(idx, sidx, ys, ys.copy(), np.ones(b, np.int64), 0)
            for depth in self.fp.depths:
                self._run([pad_only], 1, depth)
                # Pad lanes are never due: compile this bucket's refit graph explicitly.
                rows = _GATHER(self.stacked, idx)
                _ready(self.fp.refit_batch(rows, np.arange(b) < 1, depth, donate=True))
                done += 1
                if progress is not None:
                    progress(done, total)
        _ready(self.stacked)
        return total

    # --- state management --------------------------------------------------------
    def reset_states(self, fp: FunctionalPredictor) -> None:
        """Cold states for every slot under a new predictor (layout change); ids and seq kept."""
        self.fp = fp
        self.stacked = jax.device_put(fp.cold_rows(self.capacity + 1))
        self.last_mode[:] = -1

    def to_batch(self) -> AssetBatch:
        """Snapshot section input (the device state is copied by the snapshot code)."""
        n = len(self.names)
        return make_asset_batch(
            self.stacked,
            list(self.names),
            seq=self.seq[:n],
            last_ts_ns=self.last_ts[:n],
            slots=np.arange(n, dtype=np.int64),
        )

    def restore(self, batch: AssetBatch) -> None:
        """Adopt a restored snapshot section (``batch.capacity`` counts the pad row)."""
        capacity = batch.capacity - 1
        if capacity < len(batch.ids) or capacity < 1:
            raise ValueError(f"snapshot capacity {batch.capacity} cannot hold {len(batch.ids)}")
        order = np.argsort(batch.slots)
        slots = batch.slots[order]
        if not np.array_equal(slots, np.arange(len(slots))):
            raise ValueError("snapshot slots are not 0 .. n-1")
        self.capacity = capacity
        self.names = [batch.ids[i] for i in order]
        self.ids = {a: s for s, a in enumerate(self.names)}
        n = len(self.names)
        self.seq = np.zeros(capacity, np.int64)
        self.seq[:n] = batch.seq[order]
        self.last_ts = np.zeros(capacity, np.int64)
        self.last_ts[:n] = batch.last_ts_ns[order]
        host = jax.device_get(batch.state)
        # The pad row must be cold whatever the file holds.
        cold = jax.tree.map(lambda x: x[0], self.fp.cold_rows(1, first_phase=capacity))
        host = jax.tree.map(_set_row(capacity), host, cold)
        self.stacked = jax.device_put(host)
        modes = np.asarray(self.last_outputs().mode)[:capacity]
        self.last_mode = np.where(self.seq > 0, modes.astype(np.int64), -1)
        self.max_assets = max(self.max_assets, self.capacity)

    def view(self) -> AssetState:
        """Host copy of every row in readable form (one device transfer; pad row last)."""
        return self.fp.view(jax.device_get(self.stacked))

    def last_outputs(self) -> StepOutput:
        """Host copy of every row's last output (leading axis = slot, pad row last)."""
        return self.view().fast.last_output

    def mode_counts(self, modes: Sequence[str]) -> dict[str, int]:
        """Assets by the mode of their last prediction (assets without one are not counted)."""
        n = len(self.names)
        codes = self.last_mode[:n]
        counts = np.bincount(codes[codes >= 0], minlength=len(modes))
        return {m: int(counts[i]) for i, m in enumerate(modes)}


def _copy_head(n: int) -> Callable[[Any, Any], Any]:
    """Leaf function: ``dst`` with its first ``n`` rows taken from ``src``."""

    def copy(dst: Any, src: Any) -> Any:
        out = np.array(dst, copy=True)
        out[:n] = np.asarray(src)[:n]
        return out

    return copy


def _set_row(i: int) -> Callable[[Any, Any], Any]:
    """Leaf function: ``stacked`` with row ``i`` replaced by ``row``."""

    def put(stacked: Any, row: Any) -> Any:
        out = np.array(stacked, copy=True)
        out[i] = row
        return out

    return put


def _ready(tree: Any) -> None:
    """Wait until every leaf of ``tree`` is computed."""
    for leaf in jax.tree.leaves(tree):
        leaf.block_until_ready()


def _resize(a: IntArray, n: int, fill: int) -> IntArray:
    out = np.full(n, fill, a.dtype)
    out[: len(a)] = a
    return out
