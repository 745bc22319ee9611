"""Process-wide XLA settings for entry points (daemon, command-line tools, benchmarks).

A library import never changes them: ``import predictor`` leaves
``XLA_FLAGS`` alone. Programs call ``configure_deterministic_cpu`` first
thing, before anything imports JAX's CPU backend.

Why: with FMA instructions available, XLA's CPU backend contracts
``a * b + c`` into fused multiply-adds differently depending on the
surrounding graph (a scan, a batch of some size, a single step), so the same
tick could round differently depending on how it was stepped. Capping the
instruction set at SSE4.2 (no FMA) makes every graph round each operation
the same way: ``FunctionalPredictor.step_batch`` then equals single steps
bit for bit at every batch size. Without the cap the two agree to about
1e-15 relative per operation; the difference can grow over many ticks
where a decision (an alarm, an AR order) flips. A measurement on the fast
path found no speed difference between SSE4.2, AVX and AVX2. GPU backends
are not affected.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: The instruction-set cap of the determinism contract.
ISA_FLAG = "--xla_cpu_max_isa=SSE4_2"


def configure_deterministic_cpu(environ: MutableMapping[str, str] | None = None) -> bool:
    """Add ``ISA_FLAG`` to ``XLA_FLAGS`` unless a cap is already set; True if added.

    Must run before JAX starts its CPU backend (the first array or
    compilation); later calls have no effect on a running backend.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_max_isa" in flags:
        return False
    env["XLA_FLAGS"] = f"{flags} {ISA_FLAG}".strip()
    return True
