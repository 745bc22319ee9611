"""Pure JAX numerical core: no I/O, no threads.

Importing this package enables ``jax_enable_x64``: every array of the model
is float64, and the compiled graphs' signatures depend on it. It changes no
other process-wide setting; the instruction-set cap that makes batched and
single steps round alike is the entry points' choice
(``predictor.xla.configure_deterministic_cpu``).
"""

import jax

jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
