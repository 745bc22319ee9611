"""Leaves of a stacked state with their paths, and the state rebuilt from new leaves.

The walk follows ``tree.map_leaves`` (NamedTuples ``.field``, tuples and
lists ``[i]``, dicts ``.key``, registered pytree nodes ``[i]``; ``None`` is
no leaf), so the paths read like those of ``tree.encode_tree``. A leaf is a
numpy or jax array, a typed PRNG key (stored as its key data with the
implementation name) or a ``HostKey``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.snapshots.tree import (
    ALLOWED_DTYPES,
    HostKey,
    _custom_node,
    _is_jax_array,
    _is_namedtuple,
    _is_typed_key,
    _jax,
    _place_like,
    _to_device_like,
    map_leaves,
)


@dataclass(frozen=True)
class LeafSpec:
    """One leaf: path, little-endian dtype string, per-asset shape, key impl (or None)."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    impl: str | None

    @property
    def row_bytes(self) -> int:
        """Bytes of one asset's row."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_wire(self) -> dict[str, Any]:
        """Msgpack-ready form."""
        return {
            "path": self.path,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "impl": self.impl,
        }


def walk(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` in ``map_leaves`` order."""
    if tree is None:
        return
    if _is_namedtuple(tree):
        for f, v in zip(tree._fields, tree, strict=True):
            yield from walk(v, f"{path}.{f}")
    elif isinstance(tree, tuple | list):
        for i, v in enumerate(tree):
            yield from walk(v, f"{path}[{i}]")
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from walk(v, f"{path}.{k}")
    else:
        node = _custom_node(tree)
        if node is None:
            yield path, tree
        else:
            for i, c in enumerate(node[0]):
                yield from walk(c, f"{path}[{i}]")


def leaf_data(leaf: Any, path: str) -> tuple[Any, str | None]:
    """``(array, impl)``: the array a leaf is stored as, and its key impl if a key."""
    if isinstance(leaf, HostKey):
        return leaf.data, leaf.impl
    if _is_typed_key(leaf):
        jax = _jax()
        assert jax is not None
        return jax.random.key_data(leaf), str(jax.random.key_impl(leaf))
    if isinstance(leaf, np.ndarray | np.generic) or _is_jax_array(leaf):
        return leaf, None
    raise TypeError(f"stacked state leaf at {path}: {type(leaf).__name__} is not an array")


def host_array(arr: Any) -> np.ndarray[Any, Any]:
    """Host view (or copy, off-CPU) of a numpy or jax array."""
    if _is_jax_array(arr):
        jax = _jax()
        assert jax is not None
        return np.asarray(jax.device_get(arr))
    return np.asarray(arr)


def spec_of(path: str, arr: Any, impl: str | None, leading: int) -> LeafSpec:
    """Spec of a leaf array whose first ``leading`` axes are not part of the row."""
    dt = np.dtype(arr.dtype).newbyteorder("<")
    if dt.str not in ALLOWED_DTYPES:
        raise TypeError(f"cannot encode dtype {arr.dtype} at {path}: only numeric dtypes")
    shape = tuple(int(d) for d in arr.shape)
    if len(shape) < leading:
        raise ValueError(f"stacked state leaf at {path} has no slot axis")
    return LeafSpec(path, dt.str, shape[leading:], impl)


def template_specs(template: Any, path: str) -> list[LeafSpec]:
    """Specs of one asset's state (no slot axis)."""
    specs = []
    for p, leaf in walk(template, path):
        arr, impl = leaf_data(leaf, p)
        specs.append(spec_of(p, arr, impl, 0))
    return specs


def rebuild(template: Any, arrays: list[np.ndarray[Any, Any]], *, host: bool = False) -> Any:
    """``template``'s structure with its leaves replaced, in order, by ``arrays``.

    Each array becomes the template leaf's kind: a jax array (placed like the
    template), a typed key, a ``HostKey`` or the numpy array itself; with
    ``host``, jax array leaves stay numpy arrays (the caller places them). The list
    is consumed: each host array is released once its leaf is built, so at
    most one leaf exists twice at a time.
    """
    arrays.reverse()

    def build(leaf: Any) -> Any:
        arr = arrays.pop()
        if isinstance(leaf, HostKey):
            return HostKey(leaf.impl, arr)
        if _is_typed_key(leaf):
            jax = _jax()
            assert jax is not None
            wrapped = jax.random.wrap_key_data(arr, impl=str(jax.random.key_impl(leaf)))
            return _place_like(wrapped, leaf, False)
        if _is_jax_array(leaf) and not host:
            # Wait for the copy: an asynchronous transfer keeps its source
            # alive, and all leaves in flight at once would double the peak.
            return _to_device_like(arr, leaf, False).block_until_ready()
        return arr

    return map_leaves(template, build)
