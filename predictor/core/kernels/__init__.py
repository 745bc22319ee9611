"""The four prediction kernels, each an optax-style ``init`` / ``update`` pair."""
