"""Meta-optimisation: resumable Bayesian tuning on walk-forward validation.

Modules (imported on demand: ``predictorctl`` loads only ``cli`` to build
its parser, JAX and Optuna come with the command itself):

* ``walkforward``: ``WalkForward`` objective, folds and metrics (MAPE,
  RMSE, MAE, MASE), one ``lax.scan`` per fold.
* ``space``: ``SearchSpace``, the fast and deep tiers, ``LOCKED_FIELDS``.
* ``optimizer``: ``BayesianMetaOptimizer`` (Optuna TPE, per-trial reseeding,
  checkpoints on interval, best, SIGUSR1, SIGTERM/SIGINT).
* ``checkpoint``: JSON checkpoints, atomic write, SHA-256 sidecar.
* ``result``: ``OptimizationResult`` and the config mutation protocol.
* ``settings``: the ``[tuning]`` table of config.toml.
* ``async_io``: ``AsyncMetaOptimizer``, background checkpoints and export.
* ``cli``: ``predictorctl tune``.
"""
