"""The folder of a full training (`gpnas train ARCH ... --out DIR`): its files, the checkpoints written atomically,
and the checks that decide whether a command may start or continue the run in it.

DIR holds ``spec.yaml`` and ``train_config.json`` (written at the start), ``last.pt`` (after every epoch),
``best.pt`` (the EMA weights of the best val AP so far), ``mlflow_run.json`` (the tracking store and run, from
the start), ``report.json`` and ``report.md`` (at the end), and with the default store ``mlflow.db`` and
``mlartifacts/``. A folder "holds a run" once ``last.pt`` exists: one epoch has been completed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpnas.errors import ConfigError, DataError
from gpnas.search_space.sections import from_mapping, to_mapping
from gpnas.search_space.spec import ArchSpec
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.train_config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "TrainFolder", "atomic_save", "config_from_dict", "config_to_dict",
           "data_fingerprint", "resolve_config"]

CHECKPOINT_FORMAT = "gpnas-full-training"
CHECKPOINT_VERSION = 1
#: the options a resumed run may set differently from the run it continues (they do not change what is learnt
#: on CPU; on CUDA a device change ends bit-exactness, not the run)
_FREE_ON_RESUME = ("device",)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, flushed to disk, then renamed over it: a run killed
    at any moment leaves either the previous file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the weights from the user's group
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as JSON-able values (``train_config.json``, the checkpoint, MLflow params)."""
    return to_mapping(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """What :func:`config_to_dict` wrote, read back the way a search config's ``train`` section is."""
    return from_mapping(TrainConfig, data, section="train")


def resolve_config(saved: dict[str, Any] | None, given: dict[str, Any], *, source: Path) -> TrainConfig:
    """The train config of a run. ``given``: TrainConfig field -> the command's value (None: not given). A new
    run (``saved`` None): a full training's defaults with ``given`` on top. A resumed run: the run's own config
    (``saved``, from the checkpoint ``source``); an option given with another value is refused, except
    ``device``, which may change."""
    values = {key: value for key, value in given.items() if value is not None}
    if saved is None:
        if "epochs" not in values:
            raise ConfigError("--out starts a full training: give its length with --epochs N (the LR schedule "
                              "spans them)")
        return TrainConfig(**{"max_seconds": None, "eval_every": 1, **values})
    clashes = [f"--{key.replace('_', '-')} {value} (the run: {saved[key]})" for key, value in values.items()
               if key not in _FREE_ON_RESUME and value != saved[key]]
    if clashes:
        raise ConfigError(f"{source} was trained with other settings than the command gives: {'; '.join(clashes)}; "
                          "leave these options out to continue with the run's values, or start a new run with "
                          "another --out")
    return config_from_dict({**saved, **{k: v for k, v in values.items() if k in _FREE_ON_RESUME}})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(data: ProxyData) -> dict[str, Any]:
    """What makes two datasets the same training data: each split's annotation file content (SHA-256, not its
    path: a moved folder is the same data), image count, the classes and the augmentation."""
    splits = {name: {"annotations": _sha256(split.ann_file), "images": len(split)}
              for name, split in (("train", data.train), ("val", data.val))}
    return {**splits, "category_ids": list(data.train.category_ids), "img_size": data.img_size,
            "augment": dataclasses.asdict(data.train.augment)}


@dataclass(frozen=True)
class TrainFolder:
    """The paths of a full training's folder and the checks on what it holds."""

    path: Path

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def spec(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def train_config(self) -> Path:
        return self.path / "train_config.json"

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def mlflow_run(self) -> Path:
        return self.path / "mlflow_run.json"

    @property
    def default_tracking_uri(self) -> str:
        """The embedded store beside the checkpoints."""
        return f"sqlite:///{self.path.resolve() / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path.resolve() / "mlartifacts"

    def check_start(self, *, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to continue (``resume``), or None for a new run; refuses a resume without a checkpoint
        and a new run in a folder that holds one. Reads only: every rank may call it."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path} is a file; give a folder for the run")
        if resume:
            if not self.last.is_file():
                raise ConfigError(f"{self.last} not found: there is no checkpoint to resume (a full training "
                                  "writes it at the end of every epoch); start the run without --resume")
            return self.load(self.last)
        if self.last.is_file():
            raise ConfigError(f"{self.path} already holds a training run ({self.last}); continue it with --resume, "
                              "or choose another --out")
        return None

    @staticmethod
    def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
        """A checkpoint, with its tensors on ``device``; a clear error if it is not one of ours or unreadable."""
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise ConfigError(f"{path} cannot be read ({type(err).__name__}: {err}); restore it from a backup, "
                              "or start a new run with another --out") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} is not a gpnas full-training checkpoint; give the --out folder of a "
                              "`gpnas train ... --out` run")
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{path} has checkpoint version {ckpt.get('version')!r}; this gpnas reads version "
                              f"{CHECKPOINT_VERSION}: resume it with the gpnas that wrote it")
        return ckpt

    def check_same_run(self, ckpt: dict[str, Any], spec: ArchSpec, fingerprint: dict[str, Any]) -> None:
        """Refuse to continue ``ckpt`` with another architecture or other data."""
        if ckpt["arch_id"] != spec.arch_id:
            old = ckpt["spec"].get("name") or "unnamed"
            raise ConfigError(f"{self.last} was trained from architecture {ckpt['arch_id']} ({old}) but the "
                              f"command gives {spec.arch_id} ({spec.name or 'unnamed'}); resume with the run's own "
                              f"spec (gpnas train {self.spec} ... --resume), or start a new run with another --out")
        saved = ckpt["data"]
        changed = [f"{key}: {saved.get(key)} -> {value}" for key, value in fingerprint.items()
                   if saved.get(key) != value]
        if changed:
            raise DataError(f"{self.last} was trained on other data than the command gives ({'; '.join(changed)}); "
                            "resume with the same --data/--images/--val-data/--val-images files, or start a new "
                            "run with another --out")

    def write_start(self, spec: ArchSpec, config: TrainConfig) -> None:
        """``spec.yaml`` and ``train_config.json`` of a new run (rank 0)."""
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_text(self.spec, spec.to_yaml())
        _atomic_text(self.train_config, json.dumps(config_to_dict(config), indent=2) + "\n")

    def read_mlflow_run(self) -> dict[str, Any] | None:
        """The store and run a previous start of this folder opened (None: none recorded)."""
        if not self.mlflow_run.is_file():
            return None
        return json.loads(self.mlflow_run.read_text())

    def write_mlflow_run(self, uri: str, run_id: str) -> None:
        _atomic_text(self.mlflow_run, json.dumps({"tracking_uri": uri, "run_id": run_id}) + "\n")

    def write_report(self, report: dict[str, Any]) -> None:
        """``report.json`` and ``report.md``: the best checkpoint's COCO metrics on the whole val split."""
        _atomic_text(self.report_json, json.dumps(report, indent=2) + "\n")
        rows = "\n".join(f"| {key} | {report[key]:.4f} |" for key in
                         ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"))
        md = (f"# Full training of {report['name'] or report['arch_id']}\n\n"
              f"Architecture `{report['arch_id']}` trained {report['epochs']} epochs ({report['steps']} steps, "
              f"{report['seconds']:.0f} s) on `{report['data']}`. Metrics of `best.pt` (the EMA weights of epoch "
              f"{report['best_epoch']}, the best val AP) on the whole val split ({report['images']} images):\n\n"
              f"| metric | value |\n|---|---|\n{rows}\n\n"
              "| epoch | loss | AP | AP50 | seconds |\n|---|---|---|---|---|\n"
              + "".join(f"| {int(h['epoch'])} | {h['loss']:.4f} | {h['ap']:.4f} | {h['ap50']:.4f} | "
                        f"{h['seconds']:.1f} |\n" for h in report["history"]))
        _atomic_text(self.report_md, md)
