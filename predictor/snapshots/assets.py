"""Multi-asset section: every asset's state and metadata in one record.

The daemon keeps all asset states in one stacked pytree whose leading axis
is the asset slot. The section stores that pytree as it is (each leaf one
array blob of shape ``(capacity, *per_asset_shape)``, no per-asset loop)
plus, for the ``n`` live assets, their ids, slots, sequence numbers and
last tick timestamps (Unix ns)::

    {"capacity": int, "ids": [str] * n, "slots": int64[n],
     "seq": int64[n], "last_ts_ns": int64[n], "state": <encoded stacked tree>}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from predictor.snapshots.errors import MalformedSnapshotError
from predictor.snapshots.tree import decode_array, decode_tree, encode_tree, map_leaves, to_host

_SECTION_KEYS = frozenset({"capacity", "ids", "slots", "seq", "last_ts_ns", "state"})


@dataclass(frozen=True, eq=False)
class AssetBatch:
    """Stacked states of many assets with their per-asset metadata.

    ``ids[i]`` lives in slot ``slots[i]`` of every leaf of ``state``; its
    last processed tick had sequence number ``seq[i]`` and timestamp
    ``last_ts_ns[i]`` (Unix ns). Slots not named in ``slots`` are free.
    """

    ids: tuple[str, ...]
    slots: np.ndarray[Any, np.dtype[np.int64]]
    seq: np.ndarray[Any, np.dtype[np.int64]]
    last_ts_ns: np.ndarray[Any, np.dtype[np.int64]]
    state: Any
    capacity: int


def _leading_dims(tree: Any) -> set[int]:
    dims: set[int] = set()

    def visit(x: Any) -> Any:
        shape = getattr(x, "shape", None)
        if shape is None and hasattr(x, "data"):  # HostKey
            shape = x.data.shape
        if shape is None or len(shape) == 0:
            raise ValueError("a stacked asset state holds arrays with a leading slot axis only")
        dims.add(int(shape[0]))
        return x

    map_leaves(tree, visit)
    return dims


def _int64_vector(values: ArrayLike, n: int, name: str) -> np.ndarray[Any, np.dtype[np.int64]]:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} integers, got dtype {arr.dtype} shape {arr.shape}")
    return np.array(arr, dtype=np.int64, copy=True)


def _check_metadata(
    ids: Sequence[str], slots: np.ndarray[Any, np.dtype[np.int64]], capacity: int
) -> None:
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("asset ids must be strings")
    if len(set(ids)) != len(ids):
        raise ValueError("asset ids must be unique")
    if len(np.unique(slots)) != len(slots):
        raise ValueError("asset slots must be unique")
    if len(slots) and (int(slots.min()) < 0 or int(slots.max()) >= capacity):
        raise ValueError(f"asset slots must lie in [0, {capacity})")


def make_asset_batch(
    state: Any,
    ids: Sequence[str],
    *,
    seq: ArrayLike,
    last_ts_ns: ArrayLike,
    slots: ArrayLike | None = None,
) -> AssetBatch:
    """Validated ``AssetBatch``; ``slots`` defaults to ``0 .. len(ids) - 1``.

    The capacity is the common leading dimension of the state's leaves.
    """
    dims = _leading_dims(state)
    if len(dims) != 1:
        raise ValueError(f"stacked state leaves disagree on the slot axis: {sorted(dims)}")
    capacity = dims.pop()
    n = len(ids)
    slot_arr = _int64_vector(np.arange(n) if slots is None else slots, n, "slots")
    _check_metadata(ids, slot_arr, capacity)
    return AssetBatch(
        ids=tuple(ids),
        slots=slot_arr,
        seq=_int64_vector(seq, n, "seq"),
        last_ts_ns=_int64_vector(last_ts_ns, n, "last_ts_ns"),
        state=state,
        capacity=capacity,
    )


def encode_assets(batch: AssetBatch, path: str = "assets") -> dict[str, Any]:
    """Msgpack-ready section; copies the stacked state to the host first."""
    return {
        "capacity": batch.capacity,
        "ids": list(batch.ids),
        "slots": encode_tree(batch.slots, f"{path}.slots"),
        "seq": encode_tree(batch.seq, f"{path}.seq"),
        "last_ts_ns": encode_tree(batch.last_ts_ns, f"{path}.last_ts_ns"),
        "state": encode_tree(to_host(batch.state), f"{path}.state"),
    }


def decode_assets(section: Any, template: Any, path: str = "assets") -> AssetBatch:
    """Restore an assets section; ``template`` is ONE asset's fresh state.

    Every stored leaf must have the template leaf's dtype and the shape
    ``(capacity, *template_leaf.shape)``; otherwise ``LayoutMismatchError``.
    """
    if not isinstance(section, dict) or set(section) != _SECTION_KEYS:
        keys = sorted(section) if isinstance(section, dict) else type(section).__name__
        raise MalformedSnapshotError(f"{path}: expected keys {sorted(_SECTION_KEYS)}, got {keys}")
    capacity, ids = section["capacity"], section["ids"]
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
        raise MalformedSnapshotError(f"{path}.capacity: {capacity!r} is not a slot count")
    if not isinstance(ids, list):
        raise MalformedSnapshotError(f"{path}.ids is not a list")
    n = len(ids)
    meta = {}
    for name in ("slots", "seq", "last_ts_ns"):
        arr = decode_array(section[name], f"{path}.{name}")
        if arr.dtype != np.int64 or arr.shape != (n,):
            raise MalformedSnapshotError(
                f"{path}.{name}: {arr.dtype}{list(arr.shape)}, expected int64[{n}]"
            )
        meta[name] = arr.copy()
    try:
        _check_metadata(ids, meta["slots"], capacity)
    except ValueError as exc:
        raise MalformedSnapshotError(f"{path}: {exc}") from exc
    state = decode_tree(section["state"], template, f"{path}.state", leading=(capacity,))
    return AssetBatch(
        ids=tuple(ids),
        slots=meta["slots"],
        seq=meta["seq"],
        last_ts_ns=meta["last_ts_ns"],
        state=state,
        capacity=capacity,
    )
