"""What a search leaves behind: trial records and results, the search folder, the study, the Pareto view, exports,
MLflow tracking and reports.

The public API is ``__all__``; each name is imported on first use (``from gpnas.results import X``).
"""

from __future__ import annotations

from gpnas.search_space._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "TrialResult": "records",
    "TrialRecord": "records",
    "SearchInfo": "records",
    "STATES": "records",
    "SearchFolder": "folder",
    "front_summary": "front",
    "FrontSummary": "front",
    "pareto_mask": "pareto",
    "hypervolume": "pareto",
    "reference_point": "pareto",
    "export": "export",
    "pareto_rows": "export",
    "MlflowTracker": "tracking",
    "write_report": "report",
    "build_dataset": "analysis_data",
    "Surrogate": "surrogate",
    "fit_surrogate": "surrogate",
})
