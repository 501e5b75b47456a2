"""What a candidate is scored by: COCO AP (the evaluator, val inference and the trainer's ValEvaluation callback),
size (params, GFLOPs), gradient-path metrics and the per-trial feature table, zero-cost proxies, latency, and the
definitions of objectives and constraints.

The public API is ``__all__``; each name is imported on first use (``from gpnas.objectives import X``).
"""

from __future__ import annotations

from gpnas.search_space._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "METRIC_KEYS": "accuracy",
    "CocoEvaluator": "accuracy",
    "ValEvaluation": "accuracy",
    "inference_on_dataset": "accuracy",
    "load_ground_truth": "accuracy",
    "val_evaluation": "accuracy",
    "Complexity": "complexity",
    "measure_complexity": "complexity",
    "GradientPathReport": "gradient_path",
    "analyze": "gradient_path",
    "gradient_aggregates": "gradient_path",
    "measure_gradients": "gradient_path",
    "merge_measured": "gp_features",
    "stage_aggregates": "gp_features",
    "ZERO_COST_NAMES": "zero_cost",
    "zero_cost_scores": "zero_cost",
    "LatencyProtocol": "latency",
    "LatencyResult": "latency",
    "measure_latency": "latency",
    "OBJECTIVES": "definitions",
    "Objective": "definitions",
    "Constraint": "definitions",
    "get_objective": "definitions",
})
