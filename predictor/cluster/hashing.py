"""Stable placement: asset -> shard, shard -> member.

``shard_of(asset, n) = int.from_bytes(sha256(utf8(asset))[:8], "big") % n``:
the same in every process, host and language (never Python's salted
``hash``), so a feed handler written in anything can route a tick.

A shard goes to the live member of highest rendezvous weight
``w(shard, m) = int.from_bytes(sha256(f"{shard}:{m}")[:8], "big")`` (ties,
which need a 64-bit collision, go to the smaller id). Adding a member moves
to it exactly the shards it now wins (about ``shards / (k + 1)``) and moves
nothing else; removing one moves only the shards it held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def shard_of(asset: str, shards: int) -> int:
    """Shard index in ``[0, shards)`` of ``asset`` (see the module doc)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return _h64(asset.encode("utf-8")) % shards


def weight(shard: int, member: str) -> int:
    """Rendezvous weight of ``member`` for ``shard`` (unsigned 64-bit)."""
    return _h64(f"{shard}:{member}".encode())


def owner_of(shard: int, members: Iterable[str]) -> str | None:
    """The member that should own ``shard``; ``None`` when no member is live."""
    best: tuple[int, str] | None = None
    for m in members:
        key = (weight(shard, m), m)
        if best is None or key[0] > best[0] or (key[0] == best[0] and m < best[1]):
            best = key
    return None if best is None else best[1]


def assignment(shards: int, members: Iterable[str]) -> dict[int, str]:
    """``{shard: member}`` for every shard (empty when no member is live)."""
    live = sorted(set(members))
    if not live:
        return {}
    out: dict[int, str] = {}
    for s in range(shards):
        owner = owner_of(s, live)
        assert owner is not None
        out[s] = owner
    return out


def shards_of(member: str, shards: int, members: Iterable[str]) -> frozenset[int]:
    """Shards ``member`` should own among ``members`` (it need not be listed)."""
    live = set(members) | {member}
    return frozenset(s for s in range(shards) if owner_of(s, live) == member)
