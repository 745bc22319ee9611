"""Pure JAX numerical core: no I/O, no threads.

Importing this package enables float64 in JAX (``jax_enable_x64``): every
array of the model is float64, and determinism across snapshot/restore
relies on it.
"""

import jax

jax.config.update("jax_enable_x64", True)  # type: ignore[no-untyped-call]
