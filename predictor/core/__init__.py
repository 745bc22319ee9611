"""Pure JAX numerical core: no I/O, no threads.

Importing this package configures JAX for the model's determinism contract
(MODEL.md, "Determinism"):

* ``jax_enable_x64``: every array of the model is float64.
* ``--xla_cpu_max_isa=SSE4_2`` is added to ``XLA_FLAGS`` (unless the caller
  set ``xla_cpu_max_isa`` already). With FMA instructions available, XLA's
  CPU backend contracts ``a * b + c`` into fused multiply-adds differently
  depending on the surrounding graph (a scan, a batch, a single step), so the
  same tick would give results that differ in the last bit depending on how
  it was stepped. Without FMA every graph rounds each operation the same way.
  It must be set before the CPU backend starts, hence here; it does not
  affect GPU backends.
"""

import os

_ISA_FLAG = "--xla_cpu_max_isa=SSE4_2"
if "xla_cpu_max_isa" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _ISA_FLAG).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)

jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
