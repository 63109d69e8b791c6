"""Compatibility names: the evaluation code now lives in one module per concern.

* ``evaluation.members``: which kept samples become members; chains of one config.
* ``evaluation.predict``: model and data built once, member predictions (and the train-time path).
* ``evaluation.results``: metrics of member predictions (ensemble, selective, OOD, calibrated).
* ``evaluation.chains``: function-space summaries per kept sample, diagnosed across chains.
* ``evaluation.write``: predictions, JSON, plots and console tables.

Import from those modules; the names below keep older imports working.
"""

from __future__ import annotations

from bayesian_lora.evaluation.chains import (
    LOGLIK,
    LORA_NORM,
    NUM_PROBES,
    diagnose_chains,
    diagnostics_verdict,
    function_space_summaries,
    probe_indices,
)
from bayesian_lora.evaluation.predict import evaluate_module_on_test
from bayesian_lora.evaluation.results import (
    evaluate_predictions,
    lora_norms,
    lora_parameter_stats,
    ood_metrics,
    ood_scores,
    summarise_rows,
)
from bayesian_lora.evaluation.write import (
    EVALUATION_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    format_metrics,
    format_per_sample,
    json_load,
    load_predictions,
    save_predictions,
    write_diagnostic_plots,
    write_evaluation_plots,
    write_json,
)

__all__ = [
    "EVALUATION_DIR",
    "LOGLIK",
    "LORA_NORM",
    "METRICS_FILE",
    "NUM_PROBES",
    "PREDICTIONS_FILE",
    "diagnose_chains",
    "diagnostics_verdict",
    "evaluate_module_on_test",
    "evaluate_predictions",
    "format_metrics",
    "format_per_sample",
    "function_space_summaries",
    "json_load",
    "load_predictions",
    "lora_norms",
    "lora_parameter_stats",
    "ood_metrics",
    "ood_scores",
    "probe_indices",
    "save_predictions",
    "summarise_rows",
    "write_diagnostic_plots",
    "write_evaluation_plots",
    "write_json",
]
