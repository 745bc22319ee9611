"""The ``forget`` admin command: drop one asset's state from the running daemon.

Runs on the loop, between rounds (``commands``), so it never meets a table
in the middle of a step. ``AssetTable.release`` frees the asset's slot and
keeps the slots contiguous by moving the last slot's asset into it; the
shared-memory table follows: the moved asset's record is copied, byte for
byte, to its new slot, and the record of the slot left free is cleared (a
record whose asset id is empty, which readers treat as no record). A
reader that cached the old slot finds the moved asset again on its next
look-up (``LatestReader.get`` rescans when a slot no longer holds its
asset). The next snapshot no longer holds the asset; a later tick for its
name admits it again as a new asset, cold, its ``seq`` starting at 1.
"""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from predictor.daemon.assets import AssetTable
from predictor.daemon.metrics import DaemonMetrics
from predictor.ipc.shm import LatestWriter


def forget_asset(
    table: AssetTable,
    shm: LatestWriter | None,
    metrics: DaemonMetrics,
    log: FilteringBoundLogger,
    asset: str,
) -> bool:
    """Drop ``asset`` from ``table`` and ``shm``; False if the daemon holds no such asset."""
    released = table.release(asset)
    if released is None:
        return False
    if shm is not None:
        if released.moved is None:
            shm.clear(released.slot)
        else:
            shm.move(released.last, released.slot)
    metrics.assets.set(len(table))
    log.info(
        "asset_forgotten",
        asset=asset,
        slot=released.slot,
        moved=released.moved,
        moved_from=None if released.moved is None else released.last,
        assets=len(table),
    )
    return True
