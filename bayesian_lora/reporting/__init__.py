"""The sweep report's parts; ``bayesian_lora.report`` is the command and puts them together.

One place per concept:

- :mod:`~bayesian_lora.reporting.discovery`: run folders and evaluation folders of a sweep, read
  and grouped into configurations (seeds of one config);
- :mod:`~bayesian_lora.reporting.bootstrap`: percentile confidence intervals over test examples
  (the same resampled index sets for every row of a task, so rows are paired);
- :mod:`~bayesian_lora.reporting.rows`: the rows of a task's table (single model over seeds, deep
  ensemble, pooled chains at equal member counts, temperature scaling, MC dropout, the Laplace
  GLM predictive) with their OOD columns and compute;
- :mod:`~bayesian_lora.reporting.chain_checks`: MCMC diagnostics, seeds as chains and per chain
  (within-chain stationarity and ESS of the per-step trace);
- :mod:`~bayesian_lora.reporting.shift`: the "Under shift" tables (the rows scored on the shift
  tasks of ``evaluate ... shift=[...]``, from the saved shift predictions);
- :mod:`~bayesian_lora.reporting.tables`: cells, frames, markdown and CSV.
"""
