"""A trial's artifacts in its MLflow run, from the node that ran it (the worker's side of the tracking store).

A trial writes its per-layer gradient-path table, latency protocol and weights into its own run through the
tracking store, so a Ray cluster needs no shared disk: with ``mlflow server --serve-artifacts`` the files travel
over HTTP to the server's artifact root, and ``gpnas export --weights`` / ``gpnas sync --weights`` on the driver
fetch them back when the local copy is missing. mlflow is imported lazily, inside the functions.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

from gpnas.objectives.gp_features import table_schema
from gpnas.results.folder import SearchFolder, weights_name
from gpnas.results.records import TrialRecord

__all__ = ["WEIGHTS_DIR", "fetch_artifact", "local_weights", "log_trial_artifacts", "logs_here", "weights_artifact",
           "write_trial_files"]

WEIGHTS_DIR = "weights"


def weights_artifact(arch_id: str) -> str:
    """The artifact path of a trial's trained weights in its run."""
    return f"{WEIGHTS_DIR}/{weights_name(arch_id)}"


def write_trial_files(out: Path, *, gp_layers: list[dict[str, Any]], latency: dict[str, Any] | None) -> list[Path]:
    """A trial's table artifacts in ``out``: ``gradient_path_layers.csv`` (one row per layer: structure, gradient
    statistics at init and after training) and its ``gradient_path_layers.schema.json`` when there is a
    per-layer table, ``latency.json`` (the protocol and figures) when latency was measured. -> the files."""
    files = []
    if gp_layers:
        path = out / "gradient_path_layers.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(gp_layers[0]))
            writer.writeheader()
            for row in gp_layers:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
        files.append(path)
        schema = out / "gradient_path_layers.schema.json"  # what each column is, its type, when it is known
        schema.write_text(json.dumps(table_schema(gp_layers), indent=2))
        files.append(schema)
    if latency:
        path = out / "latency.json"
        path.write_text(json.dumps(latency, indent=2))
        files.append(path)
    return files


def local_weights(folder: SearchFolder, rec: TrialRecord) -> Path | None:
    """The trial's weights file on this machine (where the trial saved it, else the folder's cache), or None."""
    saved = rec.result.weights_path if rec.result is not None else None
    for path in (Path(saved) if saved else None, folder.weights_file(rec.arch_id) if rec.arch_id else None):
        if path is not None and path.is_file():
            return path
    return None


def logs_here(uri: str) -> bool:
    """Whether this node can write to the tracking store ``uri``: a server always; an SQLite store only where its
    file is (the driver's machine; another node of a cluster would make a new, empty store of its own)."""
    if uri.startswith("sqlite:"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def log_trial_artifacts(uri: str, run_id: str, *, arch_id: str, gp_layers: list[dict[str, Any]],
                        latency: dict[str, Any] | None, weights: Path | None) -> list[str]:
    """On the node that ran a trial: its per-layer table, latency protocol and weights into the trial's run
    (through the tracking server, so a cluster needs no shared disk). -> the artifact paths logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_trial_files(Path(tmp), gp_layers=gp_layers, latency=latency):
            client.log_artifact(run_id, str(path))
            logged.append(path.name)
    if weights is not None and weights.is_file():
        assert weights.name == weights_name(arch_id), f"weights of {arch_id} saved as {weights}"
        client.log_artifact(run_id, str(weights), artifact_path=WEIGHTS_DIR)
        logged.append(weights_artifact(arch_id))
    return logged


def fetch_artifact(uri: str, run_id: str, artifact: str, dst: Path) -> Path | None:
    """Download one artifact of a run to the file ``dst`` (written whole, then moved into place); None when the
    run does not hold it or the store cannot be read (the caller says what is missing and where it looked)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        try:
            got = Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, artifact, tmp))
        except (MlflowException, OSError):
            return None
        got.replace(dst)
    return dst
