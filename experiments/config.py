"""SearchConfig: typed defaults -> YAML file -> dotted overrides -> validated once -> frozen -> saved (STYLE.md 6).

Unknown keys are errors that suggest the close match; values are parsed as YAML scalars, never evaluated.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from gpnas.search_space.errors import ConfigError
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

CONFIG_SCHEMA_VERSION = 1
OBJECTIVES = ("ap", "gflops", "latency_ms")
PACKAGED_CONFIGS = Path(__file__).parent / "configs"
#: The bundled digits set's size.
DIGITS_N_TRAIN, DIGITS_N_VAL = 2000, 300
#: The default proxy budget, in optimiser steps (a work budget: the same AP on a quiet or a loaded machine), for
#: searches and `gpnas train`; benchmarks/proxy_fidelity.py measures how far its ranking agrees with longer training.
PROXY_STEPS = 300
#: The default wall-clock cap of one trial's training (a safety: a trial past it is recorded as ``timeout``).
TRIAL_MAX_SECONDS = 1800.0


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GeneDef(_Section):
    """One gene of the space: ``choices``, a numeric ``range`` (with ``step`` / ``log``), or ``fixed``.

    ``per_stage: true`` samples one value per backbone stage (P2..P5) instead of one for all.
    """

    choices: list[Any] | None = None
    range: tuple[float, float] | None = None
    step: float | None = None
    log: bool = False
    fixed: Any = None
    per_stage: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> GeneDef:
        kinds = [k for k in ("choices", "range", "fixed") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of choices, range or fixed (got {kinds or 'none'})")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high] with low <= high")
        return self


class SpaceConfig(_Section):
    base: str = "yolor-csp-nano"
    genes: dict[str, GeneDef] = {}
    anchors: Literal["base", "auto"] = "base"


class ConstraintsConfig(_Section):
    max_gflops: float | None = None
    max_params_m: float | None = None
    max_latency_ms: float | None = None


class SamplerConfig(_Section):
    """``reproducible``: propose candidates in rounds of ``budget.max_concurrent``, each round after the previous
    one has ended, so a seed proposes the same candidates however long each trial takes (a round waits for its
    slowest trial). ``false`` refills a slot as soon as it frees: faster, but the proposals depend on timing."""

    type: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int = 0
    population_size: int = 20
    n_startup_trials: int = 6
    reproducible: bool = True


class BudgetConfig(_Section):
    num_trials: int = 12
    max_concurrent: int = 2
    cpu: float = 1.0
    gpu: float = 0.0

    @field_validator("num_trials", "max_concurrent")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return v


class DataConfig(_Section):
    kind: Literal["digits", "coco"] = "digits"
    seed: int = 0
    n_train: int = DIGITS_N_TRAIN
    n_val: int = DIGITS_N_VAL
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None

    @model_validator(mode="after")
    def _coco_paths(self) -> DataConfig:
        if self.kind == "coco":
            missing = [k for k in ("train_ann", "train_images", "val_ann", "val_images") if not getattr(self, k)]
            if missing:
                raise ValueError(f"data.kind 'coco' needs {', '.join('data.' + m for m in missing)}")
        return self


class TrainSection(_Section):
    """The proxy-training budget and settings of every trial.

    Default: a work budget of ``steps`` optimiser steps. Giving ``epochs`` or ``seconds`` without ``steps``
    replaces it; ``seconds`` is the time mode ("AP at equal compute": machine- and load-dependent). Several
    budgets together: whichever comes first. ``max_seconds`` is the wall-clock cap
    per trial (evaluations included); a trial past it ends as ``timeout`` with its partial AP recorded.
    """

    epochs: int | None = None
    steps: int | None = PROXY_STEPS
    seconds: float | None = None
    max_seconds: float | None = TRIAL_MAX_SECONDS
    seed: int = 0
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.004
    ema: bool = True
    amp: bool = True
    device: str = "cpu"
    threads: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _other_budget(cls, data: Any) -> Any:
        """``seconds`` or ``epochs`` given without ``steps`` replace the default step budget (not add to it)."""
        if isinstance(data, dict) and "steps" not in data and \
                (data.get("seconds") is not None or data.get("epochs") is not None):
            data = {**data, "steps": None}
        return data

    @model_validator(mode="after")
    def _budget(self) -> TrainSection:
        if self.epochs is None and self.steps is None and self.seconds is None:
            raise ValueError("set a training budget: train.steps (default), train.epochs or train.seconds")
        for name in ("epochs", "steps", "seconds", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"train.{name} must be positive (or null), got {value}")
        return self

    def budget_label(self) -> str:
        return budget_label(steps=self.steps, epochs=self.epochs, seconds=self.seconds)


def budget_label(*, steps: float | None = None, epochs: float | None = None, seconds: float | None = None,
                 **_: Any) -> str:
    """A training budget in words: ``300 steps``, ``2 epochs or 60 seconds``."""
    parts = [f"{v:g} {k}" for k, v in (("steps", steps), ("epochs", epochs), ("seconds", seconds)) if v is not None]
    return " or ".join(parts)


class LatencySection(_Section):
    enabled: bool = True
    device: str = "cpu"
    batch: int = 1
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    warmup: int = 5
    repeats: int = 10
    iters_per_repeat: int = 3
    channels_last: bool = False
    threads: int = 1


class EarlyStoppingConfig(_Section):
    asha: bool = False
    grace_period: int = 1
    reduction_factor: int = 2


class StorageConfig(_Section):
    root: str = "runs"
    tracking_uri: str | None = None


class GradientPathConfig(_Section):
    structural: bool = True
    measured: bool = True


class SearchConfig(_Section):
    """A whole search. ``objectives`` directions are fixed by name: ap max, gflops min, latency_ms min."""

    schema_version: int = CONFIG_SCHEMA_VERSION
    name: str = "search"
    space: SpaceConfig = SpaceConfig()
    objectives: tuple[Literal["ap", "gflops", "latency_ms"], ...] = OBJECTIVES
    constraints: ConstraintsConfig = ConstraintsConfig()
    sampler: SamplerConfig = SamplerConfig()
    budget: BudgetConfig = BudgetConfig()
    data: DataConfig = DataConfig()
    train: TrainSection = TrainSection()
    latency: LatencySection = LatencySection()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
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
        if not v or len(set(v)) != len(v):
            raise ValueError(f"objectives must be a non-empty subset of {list(OBJECTIVES)} without repeats")
        return v

    @model_validator(mode="after")
    def _latency_needed(self) -> SearchConfig:
        if "latency_ms" in self.objectives and not self.latency.enabled:
            raise ValueError("objectives include latency_ms but latency.enabled is false")
        return self

    def directions(self) -> list[str]:
        return ["maximize" if o == "ap" else "minimize" for o in self.objectives]

    def search_dir(self) -> Path:
        return (Path(self.storage.root).expanduser() / self.name).resolve()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------------------------- loading
def _suggest(key: str, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(model.model_fields)}"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = SearchConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def format_config_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            model = _model_at(e["loc"])
            hint = _suggest(str(e["loc"][-1]), model) if model else ""
            lines.append(f"{source}: unknown key '{loc}'; {hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {loc or '(config)'} = {e.get('input')!r} is invalid: {msg}")
    return "\n".join(lines)


def apply_override(data: dict[str, Any], override: str) -> None:
    """``a.b.c=value``: the value is parsed as a YAML scalar/list (``3``, ``true``, ``[1, 2]``, ``null``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: write it as key.sub=value (e.g. train.seconds=30)")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: '{part}' is not a section")
    node[parts[-1]] = value


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a packaged config (``demo``, ``paper-ablation``, ``coco-gpu``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such config file, and not a packaged config ({', '.join(names)})")


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """Defaults <- YAML file (or packaged name) <- overrides, validated once."""
    data: dict[str, Any] = {}
    label = "defaults"
    if source is not None:
        path = resolve_config_path(source)
        label = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a search config must be a YAML mapping")
        data = loaded or {}
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
    path = folder / "config.yaml"
    path.write_text("# resolved gpnas search config (saved by gpnas search)\n" + cfg.to_yaml())
    return path
