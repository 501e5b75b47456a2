"""Running searches: the search config, the evaluation of one candidate, the Ray Tune + Optuna runner, fidelity
checks and the gpnas command.

The public API is ``__all__``; each name is imported on first use (``from gpnas.experiments import X``).
"""

from __future__ import annotations

from gpnas.search_space._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "SearchConfig": "config",
    "load_config": "config",
    "evaluate_candidate": "evaluate",
    "run_search": "runner",
    "start_search": "search_api",
    "resume_search": "search_api",
    "open_search": "search_api",
    "search_status": "search_api",
    "run_fidelity": "fidelity",
    "train_candidate": "train_one",
    "full_train": "full_training",
    "FullTrainRequest": "full_training",
})
