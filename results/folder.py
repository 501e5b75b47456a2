"""The search folder: every path a search reads or writes, in one place.

```
runs/<name>/
  config.yaml          the resolved search config (saved once, read by resume / status / export)
  study.db             the Optuna study: the single source of truth
  mlflow.db            the default MLflow store; mlartifacts/ its artifacts
  anchors.json         fitted anchors, when space.anchors is auto
  trials/NNNN/         spec.yaml (rebuilds the model) and result.json (the full result, per-layer table included)
  weights/<arch_id>.pt proxy-trained weights
  ray/part-K/          Ray Tune's experiment folders (one per start or resume)
  ray_pids.json        the local Ray processes of the live driver
  report/              plots and tables of the finished search
  fidelity/            `gpnas fidelity` runs and report
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpnas.results.records import TrialResult

__all__ = ["SearchFolder"]


@dataclass(frozen=True)
class SearchFolder:
    """``SearchFolder(path)``: the paths of one search folder (absolute)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser().resolve())

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    @property
    def study_url(self) -> str:
        return f"sqlite:///{self.study_db}"

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        """The default (embedded) MLflow tracking URI of this search."""
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / "mlartifacts"

    @property
    def anchors(self) -> Path:
        return self.path / "anchors.json"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial(self, number: int) -> Path:
        return self.trials / f"{number:04d}"

    def trial_spec(self, number: int) -> Path:
        return self.trial(number) / "spec.yaml"

    def trial_result(self, number: int) -> Path:
        return self.trial(number) / "result.json"

    @property
    def weights(self) -> Path:
        return self.path / "weights"

    def weights_file(self, arch_id: str) -> Path:
        return self.weights / f"{arch_id}.pt"

    @property
    def ray(self) -> Path:
        return self.path / "ray"

    @property
    def ray_pids(self) -> Path:
        return self.path / "ray_pids.json"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def fidelity(self) -> Path:
        return self.path / "fidelity"

    def write_trial(self, number: int, result: TrialResult, spec_yaml: str | None) -> Path:
        """``trials/NNNN/result.json`` (and ``spec.yaml`` when the candidate was a valid spec)."""
        folder = self.trial(number)
        folder.mkdir(parents=True, exist_ok=True)
        self.trial_result(number).write_text(result.to_json())
        if spec_yaml is not None:
            self.trial_spec(number).write_text(spec_yaml)
        return folder

    def read_trial(self, number: int) -> dict:
        """The full result a trial folder holds (``{}`` when it has none)."""
        path = self.trial_result(number)
        return json.loads(path.read_text()) if path.is_file() else {}
