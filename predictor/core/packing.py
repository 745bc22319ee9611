"""Flat rows for pytrees of arrays: one float64 row and one int64 row.

A jitted call pays a dispatch cost per argument and per output leaf (about
10 us per output leaf measured on CPU), and the per-asset state has about 70
leaves. ``Packer`` maps a pytree whose leaves are float64, integer, unsigned
or boolean arrays onto two flat rows: every floating leaf goes, flattened,
into the float64 row; every other leaf into the int64 row (int32, uint32
and bool values are exact in int64). ``unpack`` inverts it bit for bit and
restores each leaf's dtype and shape.

Leading batch axes are allowed on both sides: ``pack`` of a tree whose
leaves carry ``(*batch, *shape)`` gives rows ``(*batch, width)``. Inside a
jitted function packing and unpacking are static slices, reshapes and one
concatenate, which XLA fuses with the arithmetic around them.
"""

from __future__ import annotations

import math
from typing import Any, Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

T = TypeVar("T")


class Rows(NamedTuple):
    """A packed pytree: float64 values and int64 values (batch axes first).

    Device arrays inside compiled graphs; numpy arrays on the host.
    """

    f: Any
    i: Any


class _Slot(NamedTuple):
    path: str
    floating: bool
    start: int
    size: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class Packer(Generic[T]):
    """Packs pytrees shaped like ``template`` into ``Rows`` and back."""

    def __init__(self, template: T) -> None:
        with_paths, self._treedef = jax.tree_util.tree_flatten_with_path(template)
        slots = []
        widths = [0, 0]
        for key, leaf in with_paths:
            dtype = np.dtype(jnp.asarray(leaf).dtype)
            shape = tuple(int(d) for d in np.shape(leaf))
            floating = bool(np.issubdtype(dtype, np.floating))
            if floating and dtype != np.float64:
                raise TypeError(f"floating leaves must be float64, got {dtype}")
            size = math.prod(shape)
            k = 0 if floating else 1
            slots.append(_Slot(jax.tree_util.keystr(key), floating, widths[k], size, shape, dtype))
            widths[k] += size
        self._slots = tuple(slots)
        self._by_path = {slot.path: slot for slot in slots}
        self.f_width, self.i_width = widths

    def pack(self, tree: T) -> Rows:
        """``Rows`` of ``tree`` (leaves may carry the same leading batch axes)."""
        leaves = jax.tree.leaves(tree)
        if len(leaves) != len(self._slots):
            raise ValueError(f"expected {len(self._slots)} leaves, got {len(leaves)}")
        batch = jnp.shape(leaves[0])[: jnp.ndim(leaves[0]) - len(self._slots[0].shape)]
        fs: list[jax.Array] = []
        is_: list[jax.Array] = []
        for leaf, slot in zip(leaves, self._slots, strict=True):
            flat = jnp.reshape(jnp.asarray(leaf), (*batch, slot.size))
            if slot.floating:
                fs.append(flat.astype(jnp.float64))
            else:
                is_.append(flat.astype(jnp.int64))
        return Rows(_concat(fs, batch, jnp.float64), _concat(is_, batch, jnp.int64))

    def unpack(self, rows: Rows) -> T:
        """The pytree of ``rows`` (inverse of ``pack``; numpy rows give numpy leaves)."""
        if isinstance(rows.f, np.ndarray) and rows.f.ndim == 1:
            return self._unpack_row(rows)
        xp: Any = np if isinstance(rows.f, np.ndarray) else jnp
        batch = rows.f.shape[:-1]
        leaves = []
        for slot in self._slots:
            row = rows.f if slot.floating else rows.i
            part = row[..., slot.start : slot.start + slot.size]
            leaves.append(xp.reshape(part, (*batch, *slot.shape)).astype(slot.dtype))
        tree: T = jax.tree.unflatten(self._treedef, leaves)
        return tree

    def _unpack_row(self, rows: Rows) -> T:
        # One host row: Python lists and numpy scalars are an order of magnitude
        # cheaper than a slice, reshape and cast per leaf (it is on every tick's path).
        f, i = rows.f.tolist(), rows.i.tolist()
        leaves: list[Any] = []
        for slot in self._slots:
            values = f if slot.floating else i
            if slot.shape == ():
                leaves.append(slot.dtype.type(values[slot.start]))
            else:
                part = values[slot.start : slot.start + slot.size]
                leaves.append(np.asarray(part, slot.dtype).reshape(slot.shape))
        tree: T = jax.tree.unflatten(self._treedef, leaves)
        return tree

    def column(self, path: str) -> int:
        """Column of the scalar leaf ``path`` (``".phase"``) in its row."""
        slot = self._by_path[path]
        if slot.size != 1:
            raise ValueError(f"{path} is not a scalar leaf")
        return slot.start

    def with_leaves(self, rows: Rows, values: dict[str, Any]) -> Rows:
        """``rows`` with the scalar leaves named by path (``".gate.reject_run"``) replaced.

        Inside a compiled graph this is a few in-place element updates
        instead of re-packing every leaf.
        """
        f, i = rows
        for path, value in values.items():
            slot = self._by_path[path]
            if slot.size != 1:
                raise ValueError(f"{path} is not a scalar leaf")
            if slot.floating:
                f = f.at[..., slot.start].set(jnp.asarray(value, jnp.float64))
            else:
                i = i.at[..., slot.start].set(jnp.asarray(value).astype(jnp.int64))
        return Rows(f, i)

    def tail(self, rows: Rows, inner: Packer[Any]) -> Rows:
        """The part of ``rows`` that holds the last field, packed by ``inner``.

        Leaves are laid out in the order of ``jax.tree.flatten``, so the
        leaves of a NamedTuple's last field end both rows; this reads them
        without packing them a second time. ``inner`` must pack that field.
        """
        return Rows(
            rows.f[..., self.f_width - inner.f_width :], rows.i[..., self.i_width - inner.i_width :]
        )

    def empty(self, batch: tuple[int, ...] = ()) -> Rows:
        """Zero rows of this layout (numpy), for preallocation."""
        return Rows(
            np.zeros((*batch, self.f_width), np.float64), np.zeros((*batch, self.i_width), np.int64)
        )


def _concat(parts: list[jax.Array], batch: tuple[int, ...], dtype: Any) -> jax.Array:
    if not parts:
        return jnp.zeros((*batch, 0), dtype)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
