"""SearchConfig: typed defaults -> YAML file -> dotted overrides -> validated once -> frozen -> saved (STYLE.md 6).

Unknown keys are errors that suggest the close match; values are parsed as YAML scalars, never evaluated. The
sections are in :mod:`gpnas.experiments.config_sections`; reading a file and applying overrides in
:mod:`gpnas.experiments.config_file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpnas.errors import ConfigError
from gpnas.experiments.config_file import MAX_CONFIG_BYTES, apply_override, read_config_file, resolve_config_path
from gpnas.experiments.config_sections import (
    DIGITS_N_TRAIN,
    DIGITS_N_VAL,
    BudgetConfig,
    ConstraintsConfig,
    DataConfig,
    EarlyStoppingConfig,
    GradientPathConfig,
    LatencyConfig,
    PrescreenConfig,
    RefineConfig,
    SamplerConfig,
    SpaceConfig,
    StorageConfig,
    TrainSection,
)
from gpnas.objectives.definitions import OBJECTIVES, Direction, directions
from gpnas.results.folder import SearchFolder
from gpnas.results.records import SearchInfo
from gpnas.search_space.sections import unknown_key
from gpnas.trainers.train_config import PROXY_STEPS, TRIAL_MAX_SECONDS, TrainConfig, budget_label

__all__ = ["CONFIG_SCHEMA_VERSION", "DIGITS_N_TRAIN", "DIGITS_N_VAL", "MAX_CONFIG_BYTES", "PROXY_STEPS",
           "TRIAL_MAX_SECONDS", "DataConfig", "SearchConfig", "apply_override", "budget_label", "load_config",
           "resolve_config_path", "save_config"]

CONFIG_SCHEMA_VERSION = 1


class SearchConfig(BaseModel):
    """A whole search. ``objectives`` are registered names (:mod:`gpnas.objectives.definitions`: val_loss, ap,
    gflops, latency_ms, ...), each with its fixed direction; the default ranks by ``val_loss`` (the proxy study's
    best score at the default budget), AP is recorded beside it.
    The sections: :mod:`gpnas.experiments.config_sections`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = CONFIG_SCHEMA_VERSION
    name: str = "search"
    space: SpaceConfig = SpaceConfig()
    objectives: tuple[str, ...] = ("val_loss", "gflops", "latency_ms")
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)  # keys: the registry's
    sampler: SamplerConfig = SamplerConfig()
    budget: BudgetConfig = BudgetConfig()
    data: DataConfig = DataConfig()
    train: TrainSection = TrainConfig()
    latency: LatencyConfig = LatencyConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    prescreen: PrescreenConfig = PrescreenConfig()
    refine: RefineConfig = RefineConfig()
    storage: StorageConfig = StorageConfig()
    gradient_path: GradientPathConfig = GradientPathConfig()
    ray_address: str | None = None
    enqueue: tuple[str, ...] = ()

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != CONFIG_SCHEMA_VERSION:
            raise ValueError(f"config schema_version {v} is not supported (this gpnas reads {CONFIG_SCHEMA_VERSION})")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ ") or v.startswith("."):
            raise ValueError(f"name {v!r} must be a plain folder name (no slashes or spaces)")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [o for o in v if o not in OBJECTIVES]
        if not v or len(set(v)) != len(v) or unknown:
            raise ValueError(f"objectives must be a non-empty subset of {list(OBJECTIVES)} without repeats"
                             + (f" (unknown: {unknown})" if unknown else ""))
        return v

    @model_validator(mode="after")
    def _stages_run(self) -> SearchConfig:
        from gpnas.experiments.stage_registry import check_config

        check_config(self)  # each objective's stage is known and switched on; constraints bound cheap figures
        return self

    @model_validator(mode="after")
    def _rungs_fit(self) -> SearchConfig:
        if self.early_stopping.enabled:
            if self.train.repeats > 1:
                raise ValueError(f"train.repeats {self.train.repeats} scores a trial on the mean of whole runs, but "
                                 f"early_stopping ({self.early_stopping.type}) decides on one run's intermediate "
                                 "score: set train.repeats to 1 or turn early_stopping off")
            self.rungs()
        return self

    def rungs(self) -> tuple[str, tuple[int, ...]]:
        """(work unit, rung budgets) of successive halving: ``("steps", (33, 100))`` for 300 steps, eta 3."""
        es, train = self.early_stopping, self.train
        unit, total = ("steps", train.steps) if train.steps is not None else ("epochs", train.epochs)
        if total is None:
            raise ValueError(f"early_stopping.type {es.type} needs a work budget to place its rungs: set "
                             "train.steps or train.epochs (train.seconds alone is a time budget)")
        eta = es.reduction_factor
        lowest = es.min_budget if es.min_budget is not None else max(1, total // eta**2)
        budgets: list[int] = []
        k = 1
        while round(total / eta**k) >= max(1, lowest) and round(total / eta**k) not in budgets:
            budgets.insert(0, round(total / eta**k))
            k += 1
        if not budgets:
            raise ValueError(f"early_stopping.min_budget {lowest} leaves no rung below the trial budget "
                             f"(train.{unit}={total}, reduction_factor {eta}: the highest rung would be "
                             f"{total / eta:g}); lower min_budget or reduction_factor, or raise train.{unit}")
        if unit == "epochs" and any(b % train.eval_every for b in budgets):
            raise ValueError(f"the rungs {budgets} (epochs) must be evaluation points: set train.eval_every to 1 "
                             f"(now {train.eval_every}) or choose min_budget as a multiple of it")
        return unit, tuple(budgets)

    def directions(self) -> list[Direction]:
        return directions(self.objectives)

    def modes(self) -> list[str]:
        """Ray Tune's spelling of the directions."""
        return [OBJECTIVES[o].mode for o in self.objectives]

    def search_dir(self) -> Path:
        return self.folder().path

    def folder(self) -> SearchFolder:
        return SearchFolder(Path(self.storage.root) / self.name)

    def info(self) -> SearchInfo:
        """This search as the results floor sees it (no dependency on this config type there)."""
        return SearchInfo(name=self.name, folder=self.folder(), objectives=tuple(self.objectives),
                          constraints=self.constraints.model_dump(), settings=self.model_dump(mode="json"),
                          tracking_uri=self.storage.tracking_uri, named=self.named_points())

    def named_points(self) -> dict[str, str]:
        """arch_id -> name of each ``enqueue`` entry, as the search enqueued it (a preset with the base's anchors,
        fitted ones once the search saved them). An entry that no longer resolves (a spec file moved away), or
        presets before ``auto`` anchors were fitted, are left out: they only lose their label."""
        import json

        from gpnas.errors import GpnasError
        from gpnas.search_space.presets import PRESETS, get_preset
        from gpnas.search_space.spec import load_spec

        def resolve(name: str) -> Any:
            return get_preset(name) if name in PRESETS else load_spec(name)

        out: dict[str, str] = {}
        try:
            anchors = resolve(self.space.base).anchors
            if self.space.anchors == "auto":
                saved = self.folder().anchors
                anchors = json.loads(saved.read_text()) if saved.is_file() else None
        except (GpnasError, OSError, ValueError):
            anchors = None
        for name in self.enqueue:
            try:
                spec = resolve(name)
                if name in PRESETS:
                    if anchors is None:
                        continue
                    spec = spec.replace(anchors=anchors)
            except (GpnasError, OSError, ValueError):
                continue
            out[spec.arch_id] = name
        return out

    def check_for_run(self) -> None:
        """Everything a search needs from this machine and from its trials, checked when a search starts (not
        when a config is read: ``gpnas status``/``export`` read saved configs on machines without the data or
        the GPU, and ``gpnas fidelity`` trains without Ray's GPU shares): the devices agree with
        ``budget.gpu`` (:meth:`check_devices`) and the data paths exist (:meth:`check_paths`)."""
        self.check_devices()
        self.check_paths()

    def check_devices(self) -> None:
        """A CUDA ``train.device`` or ``latency.device`` needs ``budget.gpu > 0`` (Ray hides the GPUs from a trial
        without a GPU share, so it would fail or wait for a card it never gets); ``budget.gpu > 0`` needs one of
        them on CUDA (otherwise each trial holds a card it does not use)."""
        on_cuda = [f"{key} is {device!r}" for key, device, used in (
            ("train.device", self.train.device, True), ("latency.device", self.latency.device, self.latency.enabled))
            if used and device.startswith("cuda")]
        if on_cuda and self.budget.gpu == 0:
            raise ConfigError(f"{' and '.join(on_cuda)} but budget.gpu is 0, so a trial would get no GPU; set "
                              "budget.gpu (e.g. budget.gpu=1 for one card per trial) or use device cpu")
        if not on_cuda and self.budget.gpu > 0:
            raise ConfigError(f"budget.gpu is {self.budget.gpu:g} but train.device is {self.train.device!r} (and no "
                              "CUDA latency.device), so each trial would hold a GPU it does not use; set "
                              "train.device=cuda, or budget.gpu=0")

    def check_paths(self) -> None:
        """The data files and folders a run reads exist (their content is checked when the data is loaded)."""
        if self.data.kind != "coco":
            return
        problems = []
        for key in ("train_ann", "train_images", "val_ann", "val_images"):
            path = Path(getattr(self.data, key)).expanduser()
            is_ann = key.endswith("_ann")
            kind = "a COCO annotation file" if is_ann else "a folder of images"
            if not path.exists():
                problems.append(f"data.{key} = {str(path)!r} does not exist (it should be {kind})")
            elif path.is_file() != is_ann:
                problems.append(f"data.{key} = {str(path)!r} is a {'folder' if is_ann else 'file'}, not {kind}")
        if problems:
            raise ConfigError("; ".join(problems) + "; fix the paths in the config's data section")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------------------------- loading
def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic section that holds the key at ``loc`` (the dataclass sections refuse their own unknown keys)."""
    section: type[BaseModel] | None = SearchConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if section is not None else None
        hint = field.annotation if field is not None else None
        section = hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None
    return section


def format_config_error(err: ValidationError, source: str) -> str:
    """One line per problem, naming ``source`` and the dotted key. A rule over a whole section (a dataclass's
    ``__post_init__``, a model validator) names its keys in its message, so the section's dict is not repeated."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = _section_at(e["loc"])
            where = ".".join(str(p) for p in e["loc"][:-1])
            keys = list(section.model_fields) if section is not None else []
            lines.append(f"{source}: {unknown_key(e['loc'][-1], where, keys)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if isinstance(e.get("input"), dict):
            where = "" if not loc or msg.startswith((f"{loc}.", f"unknown key '{loc}.")) else f"{loc}: "
            lines.append(f"{source}: {where}{msg}")
        else:
            lines.append(f"{source}: {loc or '(config)'} = {e.get('input')!r} is invalid: {msg}")
    return "\n".join(lines)


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """Defaults <- YAML file (or packaged name) <- overrides, validated once."""
    data: dict[str, Any] = {}
    label = "defaults"
    if source is not None:
        path = resolve_config_path(source)
        label = str(path)
        data = read_config_file(path)
    for override in overrides:
        apply_override(data, override)
    try:
        return SearchConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_config_error(err, label)) from None
    except TypeError as err:
        raise ConfigError(f"{label}: {err}") from None


def save_config(cfg: SearchConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = SearchFolder(folder).config
    path.write_text("# resolved gpnas search config (saved by gpnas search)\n" + cfg.to_yaml())
    return path
