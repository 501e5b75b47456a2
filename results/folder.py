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
  .owner               the live driver's lock (flock) with its PID, start time and command line
  report/              plots and tables of the finished search
  fidelity/            `gpnas fidelity` runs and report
  refine/              the refinement runs of the front (plan.json, runs.jsonl)
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpnas.errors import ConfigError

try:  # POSIX only; without it a folder has no owner lock (see folder_lock)
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from gpnas.results.records import TrialResult

__all__ = ["CONFIG_FILE", "REPORT_DIR", "SPEC_FILE", "FolderInUse", "SearchFolder", "folder_lock", "weights_name"]

#: the resolved config of a search, in its folder
CONFIG_FILE = "config.yaml"
#: the plots and tables of a finished search: in its folder, and the artifact folder of its MLflow run
REPORT_DIR = "report"
#: the spec that rebuilds a trial's model: in its trial folder, and the artifact of its MLflow run
SPEC_FILE = "spec.yaml"


def weights_name(arch_id: str) -> str:
    """The file name of an architecture's trained weights (in ``weights/``, a trial's MLflow run, an export)."""
    return f"{arch_id}.pt"


class FolderInUse(ConfigError):
    """A live gpnas process owns the search folder (another `gpnas search` / `gpnas resume` runs there)."""


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
        """The resolved search config (``config.yaml``), saved when the search starts."""
        return self.path / CONFIG_FILE

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
        return self.trial(number) / SPEC_FILE

    def trial_result(self, number: int) -> Path:
        return self.trial(number) / "result.json"

    @property
    def weights(self) -> Path:
        return self.path / "weights"

    def weights_file(self, arch_id: str) -> Path:
        return self.weights / weights_name(arch_id)

    @property
    def ray(self) -> Path:
        return self.path / "ray"

    @property
    def ray_pids(self) -> Path:
        return self.path / "ray_pids.json"

    @property
    def owner_file(self) -> Path:
        return self.path / ".owner"

    @property
    def report(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def fidelity(self) -> Path:
        return self.path / "fidelity"

    @property
    def refine(self) -> Path:
        return self.path / "refine"

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


# ------------------------------------------------------------------------------------------------ ownership
_HELD: dict[Path, tuple[int, int]] = {}  # lock path -> (open fd, how many holders in this process)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def folder_lock(folder: SearchFolder) -> Iterator[None]:
    """Own ``folder`` for the block: one live driver per search folder.

    An exclusive ``flock`` on ``<folder>/.owner`` (the kernel releases it when the owner dies, however it dies),
    which also records the owner's PID, its start time and command line for the message. A second `gpnas search`
    or `gpnas resume` of a live folder raises :class:`FolderInUse` instead of touching it. Re-entrant within one
    process. Without ``fcntl`` (not POSIX) the lock is a no-op.
    """
    path = folder.owner_file
    if path in _HELD:
        fd, count = _HELD[path]
        _HELD[path] = (fd, count + 1)
        try:
            yield
        finally:
            _release(path)
        return
    folder.path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(_in_use_message(folder, _owner(path))) from None
    me = {"pid": os.getpid(), "start_time": _start_time(os.getpid()),
          "command": " ".join(Path("/proc/self/cmdline").read_bytes().decode(errors="replace").split("\0")).strip()
          if Path("/proc/self/cmdline").exists() else ""}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(me).encode())
    _HELD[path] = (fd, 1)
    try:
        yield
    finally:
        _release(path)


def _release(path: Path) -> None:
    fd, count = _HELD[path]
    if count > 1:
        _HELD[path] = (fd, count - 1)
        return
    del _HELD[path]
    os.close(fd)  # closing the descriptor releases the flock; the file stays (harmless, reused next time)


def _in_use_message(folder: SearchFolder, owner: dict) -> str:
    pid = owner.get("pid")
    alive = pid is not None and _start_time(int(pid)) == owner.get("start_time")
    who = f"process {pid} ({owner.get('command') or 'gpnas'})" if alive else "another live process"
    return (f"search folder {folder.path} is in use by {who}: a search runs there now. Wait for it to finish "
            f"(`gpnas status {folder.path}` shows its progress) or stop it (Ctrl-C, or kill {pid or 'it'}); "
            "then `gpnas resume` continues it")
