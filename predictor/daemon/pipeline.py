"""The tick pipeline: intake -> rounds -> ``AssetTable.step_parts`` -> publish.

``take`` reads what is waiting on the tick socket (``Intake.receive``);
``process`` admits new assets, groups the ticks into *rounds* (round k
holds each asset's k-th tick of the batch, in arrival order, so an asset's
ticks are stepped in order and one asset's backlog costs the others one
round per tick, never more) and steps each round as bucket-sized parts.
After each part: step latency and batch size metrics, the shedder's
observation (``Model.observe``: a change of depth or refit interval is
reported through ``on_shed``), publication,
and Emergency dumps; after each round a watchdog ping (stepping is
progress). A long round runs on the round thread while the loop keeps the
admin socket moving (``rounds.RoundRunner``).

While the start-up compiler still works on the larger buckets, rounds are
cut into the buckets already compiled (``ready_buckets``, a prefix of the
table's buckets), so nothing compiles on the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from predictor.daemon.assets import AssetLimitError, AssetTable, Part, split_sizes
from predictor.daemon.emergency import EmergencyDumps
from predictor.daemon.intake import Intake, Received
from predictor.daemon.metrics import DaemonMetrics
from predictor.daemon.model import Model
from predictor.daemon.publish import Publisher
from predictor.daemon.rounds import RoundRunner
from predictor.daemon.shedder import LevelChange
from predictor.daemon.telemetry import CompileCounter

#: Most distinct assets whose refusal is logged (the rest are only counted).
MAX_REFUSALS_LOGGED = 100


class TickPipeline:
    """Steps and publishes the ticks of the loop; see the module docstring."""

    def __init__(
        self,
        intake: Intake,
        publisher: Publisher,
        table: AssetTable,
        model: Model,
        dumps: EmergencyDumps,
        metrics: DaemonMetrics,
        compiles: CompileCounter,
        log: FilteringBoundLogger,
        *,
        ready_buckets: tuple[int, ...],
        on_shed: Callable[[LevelChange], None],
        on_round: Callable[[], None],
        rounds: RoundRunner,
    ) -> None:
        self.intake = intake
        self.publisher = publisher
        self.table = table
        self.model = model
        self.dumps = dumps
        self.metrics = metrics
        self.compiles = compiles
        self.log = log
        self.ready_buckets = ready_buckets
        self.on_shed = on_shed
        self.on_round = on_round
        self.rounds = rounds
        self._refusals_logged: set[str] = set()

    @property
    def ticks(self) -> int:
        """Valid ticks received so far."""
        return self.intake.ticks

    @property
    def predictions(self) -> int:
        """Predictions published so far (gate rejections not included)."""
        return self.publisher.predictions

    def bucket_ready(self, bucket: int) -> None:
        """The start-up compiler finished ``bucket`` (buckets finish in increasing order)."""
        if bucket not in self.ready_buckets:
            self.ready_buckets = tuple(sorted((*self.ready_buckets, bucket)))

    def take(self, budget: int) -> list[Received]:
        """Valid ticks waiting on the socket (at most ``budget`` messages)."""
        return self.intake.receive(budget)

    def has_more(self) -> bool:
        """Whether a message waits on the tick socket."""
        return self.intake.has_more()

    def process(self, items: list[Received]) -> None:
        """Step and publish ``items`` round by round."""
        ids = self.table.ids
        rounds: list[list[int]] = []
        slots: list[int] = [0] * len(items)
        seen: dict[int, int] = {}
        for i, (tick, _) in enumerate(items):
            slot = ids.get(tick.asset)
            if slot is None:
                slot = self._admit(tick.asset)
                if slot is None:
                    continue
            slots[i] = slot
            k = seen.get(slot, 0)
            seen[slot] = k + 1
            if k == len(rounds):
                rounds.append([i])
            else:
                rounds[k].append(i)
        for rnd in rounds:
            self._step_round(rnd, items, slots)
            self.on_round()

    def _admit(self, asset: str) -> int | None:
        try:
            with self.compiles.expected():  # a growth compiles gather and scatter
                slot = self.table.add(asset)
        except AssetLimitError:
            self.metrics.reject("asset_limit")
            refused = self._refusals_logged
            if asset not in refused and len(refused) < MAX_REFUSALS_LOGGED:
                refused.add(asset)
                self.log.warning("asset_refused", asset=asset, max_assets=self.table.max_assets)
            return None
        self.metrics.assets.set(len(self.table))
        self.log.info("asset_added", asset=asset, slot=slot, capacity=self.table.capacity)
        return slot

    def _step_round(self, rnd: list[int], items: list[Received], slots: list[int]) -> None:
        """One round (distinct assets) as parts sized to the ready buckets."""
        received: list[list[Received]] = []
        parts: list[Part] = []
        lo = 0
        for size in split_sizes(len(rnd), self.ready_buckets):
            chunk = rnd[lo : lo + size]
            lo += size
            recv = [items[i] for i in chunk]
            received.append(recv)
            parts.append(
                Part(
                    [slots[i] for i in chunk],
                    [r[0].y for r in recv],
                    [r[0].ref for r in recv],
                    [r[0].ts for r in recv],
                )
            )
        shedder, table, now = self.model.shedder, self.table, time.time_ns()
        results = self.rounds.run(
            lambda: table.step_parts(parts, now, shedder.depth), shedder.ewma_ns
        )
        for part, recv, res in zip(parts, received, results, strict=True):
            self.metrics.step_latency.observe(res.latency_ns * 1e-9)
            self.metrics.batch_size.observe(res.n)
            change = self.model.observe(res.latency_ns)  # a new K is in force from here
            if change is not None:
                self.on_shed(change)
            entered = self.publisher.publish(recv, list(part.slots), res, self.table)
            if entered:
                self.dumps.record(self.table, entered)
