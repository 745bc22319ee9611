"""Lossless pytree <-> msgpack-ready nested data, restored into a template.

Encoding (``encode_tree``) maps a pytree of NamedTuples, dicts, lists,
tuples, registered pytree nodes, numpy / jax arrays, typed PRNG keys and
plain Python scalars onto msgpack types. Containers and arrays become maps
tagged by the reserved key ``"__t__"``; a map without it is a plain dict
(whose own keys must be strings and may not be the tag), so decoding is
unambiguous:

* array: ``{"__t__": "nd", "dtype": "<f8", "shape": [n, m], "data": raw}``
  with ``raw`` the C-order little-endian bytes, ``len(raw) = prod(shape) *
  itemsize``. A round trip is bit-exact (NaN payloads and -0.0 included).
* typed PRNG key (``jax.random.key``): ``{"__t__": "key", "impl":
  "threefry2x32", "data": <nd of jax.random.key_data>}``; raw uint32 keys
  (``jax.random.PRNGKey``) are ordinary arrays.
* NamedTuple: ``{"__t__": "nt", "type": name, "fields": {field: node}}``.
* tuple: ``{"__t__": "tuple", "items": [...]}``; list: a msgpack array.
* other registered pytree node: ``{"__t__": "node", "type": qualified
  name, "items": [children]}``.

Decoding (``decode_tree``) walks a *template* (the state freshly
initialised from the current config) and the stored data together; any
missing or extra field, length, shape or dtype difference raises
``LayoutMismatchError`` naming the path. Only numeric dtypes are accepted
(no object arrays): nothing in a snapshot can execute code.

``to_host`` is the device -> host copy: it runs on the caller's thread so
that an asynchronous writer serialises a consistent, private copy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from predictor.snapshots.errors import LayoutMismatchError, MalformedSnapshotError

TAG = "__t__"

#: Little-endian numeric dtypes a snapshot may hold (numpy ``dtype.str``).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {
        "|b1",
        "|i1",
        "|u1",
        "<i2",
        "<u2",
        "<i4",
        "<u4",
        "<i8",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
        "<c8",
        "<c16",
    }
)
MAX_NDIM = 32
_INT_MIN = -(2**63)
_INT_LIMIT = 2**64
_SCALARS = (bool, int, float, str, bytes)


@dataclass(frozen=True, eq=False)
class HostKey:
    """Host copy of a typed PRNG key: implementation name and raw key data."""

    impl: str
    data: np.ndarray[Any, Any]


@dataclass(frozen=True)
class _Staged:
    index: int
    impl: str | None


def _jax() -> ModuleType | None:
    # A jax array can only exist once jax is imported: looking it up here
    # keeps the codec importable (and fast to import) without jax.
    return sys.modules.get("jax")


def _is_namedtuple(x: object) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _is_jax_array(x: object) -> bool:
    jax = _jax()
    return jax is not None and isinstance(x, jax.Array)


def _is_typed_key(x: object) -> bool:
    jax = _jax()
    return (
        jax is not None
        and isinstance(x, jax.Array)
        and bool(jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
    )


def _custom_node(x: object) -> tuple[list[Any], Any] | None:
    """One level of a registered pytree node: (children, treedef), else None."""
    jax = _jax()
    if jax is None or isinstance(x, np.ndarray | np.generic | HostKey) or _is_jax_array(x):
        return None
    children, treedef = jax.tree_util.tree_flatten(x, is_leaf=lambda n: n is not x)
    if jax.tree_util.treedef_is_leaf(treedef):
        return None
    return list(children), treedef


def _type_name(x: object) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}"


def map_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every leaf, rebuilding the containers this codec knows."""
    if tree is None:
        return None
    if _is_namedtuple(tree):
        return type(tree)(*(map_leaves(v, fn) for v in tree))
    if isinstance(tree, tuple):
        return tuple(map_leaves(v, fn) for v in tree)
    if isinstance(tree, list):
        return [map_leaves(v, fn) for v in tree]
    if isinstance(tree, Mapping):
        return {k: map_leaves(v, fn) for k, v in tree.items()}
    node = _custom_node(tree)
    if node is not None:
        children, treedef = node
        return treedef.unflatten([map_leaves(c, fn) for c in children])
    return fn(tree)


def to_host(tree: Any) -> Any:
    """Private host copy of a pytree: numpy arrays that own their memory.

    Device arrays are fetched with one ``jax.device_get`` over all leaves
    (transfers overlap); typed keys become ``HostKey``; numpy arrays are
    copied so that later in-place changes by the caller cannot leak into a
    snapshot being written on another thread.
    """
    jax = _jax()
    pending: list[Any] = []

    def stage(x: Any) -> Any:
        if _is_typed_key(x):
            assert jax is not None
            pending.append(jax.random.key_data(x))
            return _Staged(len(pending) - 1, str(jax.random.key_impl(x)))
        if _is_jax_array(x):
            pending.append(x)
            return _Staged(len(pending) - 1, None)
        if isinstance(x, np.ndarray):
            return np.array(x, copy=True)
        if isinstance(x, HostKey):
            return HostKey(x.impl, np.array(x.data, copy=True))
        return x

    staged = map_leaves(tree, stage)
    if not pending:
        return staged
    assert jax is not None
    fetched = jax.device_get(pending)

    def finish(x: Any) -> Any:
        if not isinstance(x, _Staged):
            return x
        arr = np.asarray(fetched[x.index])
        if not arr.flags.owndata:
            # On CPU the fetched array may be a view of the device buffer.
            arr = arr.copy()
        return arr if x.impl is None else HostKey(x.impl, arr)

    return map_leaves(staged, finish)


# ---------------------------------------------------------------- encode ---
def _encode_array(a: np.ndarray[Any, Any], path: str) -> dict[str, Any]:
    le = a.dtype.newbyteorder("<")
    if le.str not in ALLOWED_DTYPES:
        raise TypeError(f"cannot encode dtype {a.dtype} at {path}: only numeric dtypes")
    arr = np.asarray(a, dtype=le, order="C")  # keeps 0-d (ascontiguousarray would not)
    # A memoryview, not bytes: msgpack packs it as bin without an extra copy.
    raw = memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    return {TAG: "nd", "dtype": le.str, "shape": list(arr.shape), "data": raw}


def encode_tree(tree: Any, path: str = "state") -> Any:
    """Msgpack-ready nested data for ``tree`` (see the module docstring).

    Array data is referenced, not copied: encode the output of ``to_host``
    when the caller may modify its arrays before the data is packed.
    """
    if tree is None:
        return None
    if isinstance(tree, np.ndarray | np.generic) or (
        _is_jax_array(tree) and not _is_typed_key(tree)
    ):
        # Before the Python scalars: np.float64 is a subclass of float.
        return _encode_array(np.asarray(tree), path)
    if isinstance(tree, _SCALARS):
        out_of_range = isinstance(tree, int) and not _INT_MIN <= tree < _INT_LIMIT
        if out_of_range and not isinstance(tree, bool):
            raise TypeError(f"integer at {path} does not fit 64 bits: {tree!r}")
        return tree
    if isinstance(tree, HostKey):
        return {TAG: "key", "impl": tree.impl, "data": _encode_array(tree.data, path)}
    if _is_typed_key(tree):
        jax = _jax()
        assert jax is not None
        data = np.asarray(jax.random.key_data(tree))
        return {
            TAG: "key",
            "impl": str(jax.random.key_impl(tree)),
            "data": _encode_array(data, path),
        }
    if _is_namedtuple(tree):
        fields = {f: encode_tree(v, f"{path}.{f}") for f, v in zip(tree._fields, tree, strict=True)}
        return {TAG: "nt", "type": type(tree).__name__, "fields": fields}
    if isinstance(tree, tuple):
        return {TAG: "tuple", "items": [encode_tree(v, f"{path}[{i}]") for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [encode_tree(v, f"{path}[{i}]") for i, v in enumerate(tree)]
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            if not isinstance(k, str) or k == TAG:
                raise TypeError(
                    f"dict key {k!r} at {path}: keys must be strings other than {TAG!r}"
                )
            out[k] = encode_tree(v, f"{path}.{k}")
        return out
    node = _custom_node(tree)
    if node is not None:
        children, _ = node
        items = [encode_tree(c, f"{path}[{i}]") for i, c in enumerate(children)]
        return {TAG: "node", "type": _type_name(tree), "items": items}
    raise TypeError(f"cannot encode {type(tree).__name__} at {path}")


# ---------------------------------------------------------------- decode ---
def _tagged(node: Any, tag: str, path: str) -> dict[str, Any]:
    if not isinstance(node, dict) or node.get(TAG) != tag:
        raise LayoutMismatchError(path, f"expected {_describe_tag(tag)}, found {_describe(node)}")
    return node


def _describe_tag(tag: str) -> str:
    return {
        "nd": "an array",
        "key": "a typed PRNG key",
        "nt": "a NamedTuple",
        "tuple": "a tuple",
        "node": "a pytree node",
    }[tag]


def _describe(node: Any) -> str:
    if isinstance(node, dict):
        tag = node.get(TAG)
        if tag == "nd":
            return f"an array {node.get('dtype')}{node.get('shape')}"
        if isinstance(tag, str) and tag in ("key", "nt", "tuple", "node"):
            return _describe_tag(tag)
        return "a dict"
    if isinstance(node, list):
        return f"a list of {len(node)}"
    return "None" if node is None else type(node).__name__


def decode_array(node: Any, path: str) -> np.ndarray[Any, Any]:
    """Validated read-only array view over an ``nd`` node's bytes."""
    node = _tagged(node, "nd", path)
    dtype, shape, data = node.get("dtype"), node.get("shape"), node.get("data")
    if set(node) != {TAG, "dtype", "shape", "data"}:
        raise MalformedSnapshotError(f"array at {path}: unexpected keys {sorted(node)}")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise MalformedSnapshotError(f"array at {path}: dtype {dtype!r} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise MalformedSnapshotError(f"array at {path}: bad shape {shape!r}")
    if isinstance(data, memoryview):  # an encoded tree not yet through msgpack
        data = data.cast("B")
    elif not isinstance(data, bytes):
        raise MalformedSnapshotError(f"array at {path}: data is {type(data).__name__}, not bytes")
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize
    if len(data) != expected:
        raise MalformedSnapshotError(
            f"array at {path}: {len(data)} bytes of data for shape {shape} {dtype} ({expected})"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _check_array(
    arr: np.ndarray[Any, Any], dtype: np.dtype[Any], shape: tuple[int, ...], path: str
) -> None:
    want = dtype.newbyteorder("<").str
    if arr.dtype.str != want:
        raise LayoutMismatchError(path, f"dtype {arr.dtype.str}, expected {want}")
    if arr.shape != shape:
        raise LayoutMismatchError(path, f"shape {list(arr.shape)}, expected {list(shape)}")


def _place_like(value: Any, template: Any, same_shape: bool) -> Any:
    """``value`` on the template's device(s), committed only if the template is.

    An uncommitted template (plain ``jnp`` array) gets an uncommitted copy
    on the default device, so jitted steps see the same placement as with
    a fresh state and do not recompile.
    """
    jax = _jax()
    assert jax is not None
    devices = template.devices()
    if not template.committed or (not same_shape and len(devices) != 1):
        return jax.device_put(value)
    return jax.device_put(value, template.sharding if same_shape else next(iter(devices)))


def _to_device_like(arr: np.ndarray[Any, Any], template: Any, same_shape: bool) -> Any:
    out = _place_like(arr, template, same_shape)
    if out.dtype != arr.dtype:
        raise RuntimeError(
            f"jax turned {arr.dtype} into {out.dtype}: jax_enable_x64 is off "
            "(import predictor.core before restoring a snapshot)"
        )
    return out


def decode_tree(
    node: Any, template: Any, path: str = "state", leading: tuple[int, ...] = ()
) -> Any:
    """Rebuild ``template``'s structure from ``node``; refuse any layout difference.

    ``leading`` is a shape prefix every stored array must carry in front of
    its template's shape (the asset axis of a stacked state). Restored
    leaves take the template's kind: a jax array (placed on the template's
    device), a writable numpy array, a numpy scalar, a typed key or a
    Python scalar of the same type.
    """
    if template is None:
        if node is not None:
            raise LayoutMismatchError(path, f"expected None, found {_describe(node)}")
        return None
    if isinstance(template, HostKey) or _is_typed_key(template):
        return _decode_key(node, template, path, leading)
    if isinstance(template, np.ndarray | np.generic) or _is_jax_array(template):
        tmpl_shape = tuple(int(d) for d in template.shape)
        arr = decode_array(node, path)
        _check_array(arr, np.dtype(template.dtype), leading + tmpl_shape, path)
        if _is_jax_array(template):
            return _to_device_like(arr, template, not leading)
        if isinstance(template, np.generic) and not leading:
            return arr[()]
        return arr.copy()
    if isinstance(template, _SCALARS):
        if type(node) is not type(template):
            raise LayoutMismatchError(
                path, f"expected {type(template).__name__}, found {_describe(node)}"
            )
        return node
    if _is_namedtuple(template):
        fields = _tagged(node, "nt", path).get("fields")
        if not isinstance(fields, dict):
            raise MalformedSnapshotError(f"NamedTuple at {path}: fields is not a map")
        _same_keys(set(fields), list(template._fields), path)
        values = [
            decode_tree(fields[f], v, f"{path}.{f}", leading)
            for f, v in zip(template._fields, template, strict=True)
        ]
        return type(template)(*values)
    if isinstance(template, tuple):
        items = _items(_tagged(node, "tuple", path).get("items"), len(template), path)
        return tuple(
            decode_tree(n, t, f"{path}[{i}]", leading)
            for i, (n, t) in enumerate(zip(items, template, strict=True))
        )
    if isinstance(template, list):
        items = _items(node, len(template), path)
        return [
            decode_tree(n, t, f"{path}[{i}]", leading)
            for i, (n, t) in enumerate(zip(items, template, strict=True))
        ]
    if isinstance(template, Mapping):
        if not isinstance(node, dict) or TAG in node:
            raise LayoutMismatchError(path, f"expected a dict, found {_describe(node)}")
        _same_keys(set(node), list(template), path)
        return {k: decode_tree(node[k], v, f"{path}.{k}", leading) for k, v in template.items()}
    custom = _custom_node(template)
    if custom is not None:
        children, treedef = custom
        tagged = _tagged(node, "node", path)
        if tagged.get("type") != _type_name(template):
            raise LayoutMismatchError(
                path, f"pytree node {tagged.get('type')!r}, expected {_type_name(template)!r}"
            )
        items = _items(tagged.get("items"), len(children), path)
        return treedef.unflatten(
            [
                decode_tree(n, t, f"{path}[{i}]", leading)
                for i, (n, t) in enumerate(zip(items, children, strict=True))
            ]
        )
    raise TypeError(f"template at {path}: unsupported type {type(template).__name__}")


def _decode_key(node: Any, template: Any, path: str, leading: tuple[int, ...]) -> Any:
    tagged = _tagged(node, "key", path)
    if isinstance(template, HostKey):
        impl, kd = template.impl, template.data
    else:
        jax = _jax()
        assert jax is not None
        impl, kd = str(jax.random.key_impl(template)), jax.random.key_data(template)
    if tagged.get("impl") != impl:
        raise LayoutMismatchError(path, f"PRNG key impl {tagged.get('impl')!r}, expected {impl!r}")
    data = decode_array(tagged.get("data"), path)
    _check_array(data, np.dtype(kd.dtype), leading + tuple(int(d) for d in kd.shape), path)
    if isinstance(template, HostKey):
        return HostKey(impl, data.copy())
    jax = _jax()
    assert jax is not None
    wrapped = jax.random.wrap_key_data(data, impl=impl)
    return _place_like(wrapped, template, not leading)


def _items(node: Any, n: int, path: str) -> list[Any]:
    if not isinstance(node, list):
        raise LayoutMismatchError(path, f"expected a sequence of {n}, found {_describe(node)}")
    if len(node) != n:
        raise LayoutMismatchError(path, f"{len(node)} items, expected {n}")
    return node


def _same_keys(stored: set[str], expected: list[str], path: str) -> None:
    missing = [k for k in expected if k not in stored]
    extra = sorted(stored - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unexpected " + ", ".join(extra))
        raise LayoutMismatchError(path, "; ".join(parts))


def decode_untyped(node: Any, path: str = "state") -> Any:
    """Best-effort reading without a template (inspection, forensics).

    NamedTuples and pytree nodes come back as dicts / lists, arrays as
    read-only numpy arrays, typed keys as ``HostKey``.
    """
    if isinstance(node, list):
        return [decode_untyped(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    tag = node.get(TAG)
    if tag is None:
        return {k: decode_untyped(v, f"{path}.{k}") for k, v in node.items()}
    if tag == "nd":
        return decode_array(node, path)
    if tag == "key":
        return HostKey(str(node.get("impl")), decode_array(node.get("data"), path))
    if tag == "nt":
        fields = node.get("fields")
        if not isinstance(fields, dict):
            raise MalformedSnapshotError(f"NamedTuple at {path}: fields is not a map")
        return {k: decode_untyped(v, f"{path}.{k}") for k, v in fields.items()}
    if tag in ("tuple", "node"):
        items = node.get("items")
        if not isinstance(items, list):
            raise MalformedSnapshotError(f"{tag} at {path}: items is not a list")
        out = [decode_untyped(v, f"{path}[{i}]") for i, v in enumerate(items)]
        return tuple(out) if tag == "tuple" else out
    raise MalformedSnapshotError(f"unknown tag {tag!r} at {path}")
