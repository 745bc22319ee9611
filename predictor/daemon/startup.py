"""The start-up compiler: builds the engine and compiles its graphs off the loop.

One thread, started by the service once its shell serves the admin socket:

1. ``build`` the engine (model, table, restore, shared memory);
2. compile the real table's gathers and scatters and the first bucket's
   step graphs (``warmup``), then post ``adopt(engine)``: the loop takes the
   engine, sends ``READY=1`` and starts stepping ticks;
3. compile the other buckets one by one, posting ``bucket_ready(b)`` after
   each, then ``finished()``.

Everything it reports goes through the loop's mailbox; the thread never
calls into the service. A stop request sets ``cancel``: the thread stops
between two graphs. A failure is posted as ``failed(exc)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from predictor.daemon.engine import Engine
from predictor.daemon.lifecycle import Mailbox
from predictor.daemon.telemetry import CompileCounter
from predictor.daemon.warmup import StartupCancelled, warm_bucket


@dataclass(frozen=True)
class StartupHooks:
    """What the thread posts to the loop (each runs on the loop thread)."""

    graph_done: Callable[[], None]
    adopt: Callable[[Engine, float], None]
    bucket_ready: Callable[[int], None]
    finished: Callable[[float], None]
    failed: Callable[[BaseException], None]


class Startup:
    """The start-up compiler thread; see the module docstring."""

    def __init__(
        self,
        build: Callable[[], Engine],
        buckets: tuple[int, ...],
        hooks: StartupHooks,
        mailbox: Mailbox,
        compiles: CompileCounter,
        log: FilteringBoundLogger,
    ) -> None:
        self.build = build
        self.buckets = buckets
        self.hooks = hooks
        self.mailbox = mailbox
        self.compiles = compiles
        self.log = log
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup_compiler", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether graphs are still compiling."""
        return self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to stop between graphs and wait up to ``timeout``; True if it ended."""
        self.cancel.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _post_graph(self) -> None:
        self.mailbox.post(self.hooks.graph_done)

    def _run(self) -> None:
        start = time.perf_counter()
        hooks, post = self.hooks, self.mailbox.post
        try:
            with self.compiles.expected():
                engine = self.build()
                engine.table.warm_gather_scatter()
                first, *rest = self.buckets
                self._bucket(engine, first)
                ready_s = time.perf_counter() - start
                post(lambda: hooks.adopt(engine, ready_s))
                for bucket in rest:
                    self._bucket(engine, bucket)
                    post(lambda b=bucket: hooks.bucket_ready(b))  # type: ignore[misc]
            total_s = time.perf_counter() - start
            post(lambda: hooks.finished(total_s))
        except StartupCancelled:
            self.log.info("warmup_cancelled")
        except Exception as exc:
            post(lambda err=exc: hooks.failed(err))  # type: ignore[misc]

    def _bucket(self, engine: Engine, bucket: int) -> None:
        if self.cancel.is_set():
            raise StartupCancelled("stop requested during warm-up")
        warm_bucket(
            engine.model.fp,
            bucket,
            engine.table.capacity,
            self.log,
            on_graph=self._post_graph,
            cancel=self.cancel,
        )
