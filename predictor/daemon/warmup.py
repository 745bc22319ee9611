"""Start-up compilation: the ladder's graphs, first bucket first, the rest in the background.

Graphs to compile: every batch bucket x every depth of the ladder
(``model.ladder_config``), nothing else. The order serves ``READY=1`` early:

1. gather and scatter of the real table for every bucket (small graphs),
   and the step graphs of the first (smallest) bucket at every ladder depth
   (the shedder may switch depth at any round): then the daemon is ready;
2. the step graphs of the other buckets, one bucket at a time, while the
   loop already steps ticks with the buckets that are ready.

A bucket's step graphs are compiled by stepping pad lanes of a *scratch*
``AssetTable`` that shares the daemon's ``FunctionalPredictor``: the step
graphs belong to the predictor and depend only on the bucket, so the real
table finds them compiled, and the scratch table's stepping never touches
the real table's state (which the loop is stepping meanwhile). The scratch
table has the real table's capacity (up to ``SCRATCH_MAX_CAPACITY``), so
its gathers and scatters are the real table's graphs too.

Progress is counted in step graphs (``Progress``, read by ``status``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from predictor.core.functional import FunctionalPredictor
from predictor.daemon.assets import AssetTable

#: Largest scratch table (rows): above it, the scratch gathers and scatters
#: compile graphs of their own rather than double a large table in memory.
SCRATCH_MAX_CAPACITY = 4096


class StartupCancelled(Exception):
    """A stop request arrived while graphs were compiling."""


@dataclass
class Progress:
    """Step graphs compiled so far out of ``total``; ``ready`` once the daemon can serve."""

    total: int
    done: int = 0
    ready: bool = False
    finished: bool = False

    def text(self) -> str:
        """``warming up: 3/8 graphs`` (or ``running`` when every graph is compiled)."""
        if self.finished or self.done >= self.total:
            return "running"
        return f"warming up: {self.done}/{self.total} graphs"


def warm_bucket(
    fp: FunctionalPredictor,
    bucket: int,
    capacity: int,
    log: FilteringBoundLogger,
    *,
    on_graph: Callable[[], None],
    cancel: threading.Event | None = None,
) -> None:
    """Compile ``fp``'s step graphs of ``bucket`` at every depth (see the module docstring).

    ``on_graph`` is called after each graph; a set ``cancel`` raises
    ``StartupCancelled`` between graphs.
    """
    rows = max(1, min(capacity, SCRATCH_MAX_CAPACITY))
    scratch = AssetTable(fp, capacity=rows, max_assets=rows, buckets=(bucket,), log=log, workers=1)

    def progress(_done: int, _total: int) -> None:
        on_graph()
        if cancel is not None and cancel.is_set():
            raise StartupCancelled("stop requested during warm-up")

    try:
        scratch.warmup(progress)
    finally:
        scratch.close()
