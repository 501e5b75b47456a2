"""SearchConfig: typed defaults -> YAML file -> dotted overrides -> validated once -> frozen -> saved (STYLE.md 6).

Unknown keys are errors that suggest the close match; values are parsed as YAML scalars, never evaluated.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from gpnas.experiments.config_file import MAX_CONFIG_BYTES, apply_override, read_config_file, resolve_config_path
from gpnas.objectives.definitions import CONSTRAINTS, OBJECTIVES, Direction, directions
from gpnas.objectives.latency import LatencyProtocol
from gpnas.results.folder import SearchFolder
from gpnas.results.records import SearchInfo
from gpnas.search_space.errors import ConfigError
from gpnas.trainers.augment import Augment
from gpnas.trainers.train_config import PROXY_STEPS, TRIAL_MAX_SECONDS, TrainConfig, budget_label

__all__ = ["CONFIG_SCHEMA_VERSION", "DIGITS_N_TRAIN", "DIGITS_N_VAL", "MAX_CONFIG_BYTES", "PROXY_STEPS",
           "TRIAL_MAX_SECONDS", "DataConfig", "SearchConfig", "apply_override", "budget_label", "load_config",
           "resolve_config_path", "save_config"]

CONFIG_SCHEMA_VERSION = 1
#: The bundled digits set's size.
DIGITS_N_TRAIN, DIGITS_N_VAL = 2000, 300


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
    """Limits on figures known before training: one key per registered constraint (``max_gflops``,
    ``max_params_m``, ``max_latency_ms``, and ``max_<name>`` / ``min_<name>`` of any objective registered with
    one: :data:`gpnas.objectives.definitions.CONSTRAINTS`), each a number or null (no limit). The keys are read
    from the registry when a config is validated, so a constraint registered later is a key here at once."""

    model_config = ConfigDict(frozen=True, extra="allow")
    __pydantic_extra__: dict[str, float | None]  # every key is a registered constraint (checked below)

    @model_validator(mode="before")
    @classmethod
    def _registered(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            if key not in CONSTRAINTS:
                close = difflib.get_close_matches(str(key), list(CONSTRAINTS), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(CONSTRAINTS)}"
                raise ValueError(f"unknown key 'constraints.{key}'; {hint}")
        return {key: data.get(key) for key in CONSTRAINTS}


class SamplerConfig(_Section):
    """``reproducible``: propose candidates in rounds of ``budget.max_concurrent``, each round after the previous
    one has ended, so a seed proposes the same candidates however long each trial takes (a round waits for its
    slowest trial). ``false`` refills a slot as soon as it frees: faster, but the proposals depend on timing."""

    type: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int = 0
    population_size: int = 20
    n_startup_trials: int = 6
    reproducible: bool = True

    @field_validator("population_size")
    @classmethod
    def _population(cls, v: int) -> int:
        if v < 2:
            raise ValueError("sampler.population_size must be at least 2 (NSGA-II breeds pairs of parents)")
        return v

    @field_validator("n_startup_trials")
    @classmethod
    def _startup(cls, v: int) -> int:
        if v < 0:
            raise ValueError("sampler.n_startup_trials must be 0 or more (random trials before the model is used)")
        return v


class BudgetConfig(_Section):
    """Trials and what each one holds. ``resources`` are custom Ray resources per trial (e.g. ``{trainer: 1}``):
    trials then run only on the nodes started with them (`ray start --resources '{"trainer": 4}'`)."""

    num_trials: int = 12
    max_concurrent: int = 2
    cpu: float = 1.0
    gpu: float = 0.0
    resources: dict[str, float] = {}

    @field_validator("resources")
    @classmethod
    def _custom(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name.upper() in ("CPU", "GPU") or name.lower() in ("memory", "object_store_memory"):
                raise ValueError(f"budget.resources.{name}: set CPUs and GPUs with budget.cpu / budget.gpu; "
                                 "resources holds custom Ray resources only")
            if not (math.isfinite(amount) and amount > 0):
                raise ValueError(f"budget.resources.{name} must be a positive amount per trial, got {amount}")
        return v

    @field_validator("num_trials", "max_concurrent")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return v

    @field_validator("cpu", "gpu")
    @classmethod
    def _resources(cls, v: float, info: Any) -> float:
        key = f"budget.{info.field_name}"
        if info.field_name == "cpu" and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{key} must be a positive number of CPUs per trial (e.g. 1 or 0.5)")
        if info.field_name == "gpu" and not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{key} must be 0 (no GPU) or a positive share of a GPU per trial (e.g. 1 or 0.5)")
        return v


class DataConfig(_Section):
    """What the trials read, how the train images are augmented and whether decoded images are kept in memory.
    (How fast batches are fed — loader workers, pinned memory, prefetching — is the ``train`` section's.)

    ``flip``: horizontal-flip probability; null: the kind's default, 0 for digits (a mirrored digit is another
    glyph) and 0.5 for coco. ``hsv_h``, ``hsv_s``, ``hsv_v``: YOLO-style colour-jitter gains (YOLOv5 uses
    0.015, 0.7, 0.4 on COCO; 0: off, the default). ``cache``: keep decoded letterboxed images in memory —
    ``auto`` (default) when all of a split's images fit in 1 GiB (the digits set does, COCO does not), true, or
    false; each loader worker holds its own cache (:class:`gpnas.trainers.data.CocoDetection`).
    """

    kind: Literal["digits", "coco"] = "digits"
    seed: int = 0
    n_train: int = DIGITS_N_TRAIN
    n_val: int = DIGITS_N_VAL
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    flip: float | None = None
    hsv_h: float = 0.0
    hsv_s: float = 0.0
    hsv_v: float = 0.0
    cache: bool | str = "auto"  # ``| str``: a wrong word gets the rule below, not pydantic's union message

    @field_validator("cache")
    @classmethod
    def _cache(cls, v: bool | str) -> bool | str:
        if v not in (True, False, "auto"):
            raise ValueError("data.cache must be auto (cache when all images fit in 1 GiB), true or false")
        return v

    @model_validator(mode="after")
    def _augment_ranges(self) -> DataConfig:
        self.augment()  # Augment's rules, checked when the config is read; its messages name data.<key>
        return self

    def augment(self) -> Augment:
        """The train split's augmentation (``flip`` null resolved for the kind)."""
        flip = self.flip if self.flip is not None else (0.0 if self.kind == "digits" else 0.5)
        return Augment(flip=flip, hsv_h=self.hsv_h, hsv_s=self.hsv_s, hsv_v=self.hsv_v)

    @field_validator("n_train", "n_val")
    @classmethod
    def _count(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"data.{info.field_name} must be at least 1 (images in the split)")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v < 0:
            raise ValueError("data.seed must be 0 or more")
        return v

    @model_validator(mode="after")
    def _coco_paths(self) -> DataConfig:
        if self.kind == "coco":
            missing = [k for k in ("train_ann", "train_images", "val_ann", "val_images") if not getattr(self, k)]
            if missing:
                raise ValueError(f"data.kind 'coco' needs {', '.join('data.' + m for m in missing)}")
        return self


class _LatencyBase(_Section):
    """The latency protocol of every trial (the input size is the candidate's); ``enabled: false`` skips it.

    ``mode``: ``predicted`` (default) sums the per-layer table of this machine (measured once, quietly, and then
    only read: the same figure on a quiet or a busy machine); ``measured`` times each candidate end to end, while
    the trials training on this machine pause; ``both`` records both and optimises the prediction.
    """

    enabled: bool = True
    mode: Literal["predicted", "measured", "both"] = "predicted"

    @model_validator(mode="after")
    def _valid_protocol(self) -> _LatencyBase:
        try:  # the protocol's own rules, checked when the config is read
            self.protocol(img_size=32)
        except ValueError as err:
            raise ValueError(str(err).replace("LatencyProtocol.", "latency.")) from None
        return self

    def protocol(self, *, img_size: int) -> LatencyProtocol:
        fields = {k: v for k, v in self.model_dump().items() if k not in ("enabled", "mode")}
        return LatencyProtocol(img_size=img_size, **fields)


def _section_of(cls: type, base: type[BaseModel], *, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A config section generated from a dataclass: the same keys, types and defaults, so a key valid for the
    dataclass is valid in the config and the other way round."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)
                              if f.name not in exclude}
    return create_model(f"{cls.__name__}Section", __base__=base, __module__=__name__, **fields)


LatencySection = _section_of(LatencyProtocol, _LatencyBase, exclude=("img_size",))


class EarlyStoppingConfig(_Section):
    """Asynchronous successive halving inside Ray Tune (:mod:`gpnas.experiments.successive_halving`).

    ``type``: ``none`` (every candidate trains its whole budget), ``asha`` (rank at each rung by AP alone) or
    ``mo-asha`` (rank by Pareto rank on the search's objectives with AP taken at the rung, ties by hypervolume
    contribution). Rungs at budget/η, budget/η², ... (η = ``reduction_factor``, rounded) down to ``min_budget``,
    in the trainer's work unit (``train.steps``, else ``train.epochs``); at each rung a trial continues when it
    is in the top 1/η of the trials seen there. ``min_budget`` null: budget/η² (two rungs).
    """

    type: Literal["none", "asha", "mo-asha"] = "none"
    min_budget: int | None = None
    reduction_factor: int = 3

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("asha" in data or "grace_period" in data):
            old = data.get("asha")
            kind = "none" if old is False else "asha (AP only) or mo-asha (Pareto rank)"
            raise ValueError(f"early_stopping.asha and early_stopping.grace_period were replaced: write "
                             f"early_stopping.type: {kind}, with early_stopping.min_budget (the first rung, in "
                             "train.steps or train.epochs; grace_period counted epochs) and "
                             "early_stopping.reduction_factor")
        return data

    @field_validator("min_budget")
    @classmethod
    def _min_budget(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("early_stopping.min_budget must be at least 1 (the first rung, in train.steps or "
                             "train.epochs), or null for the budget / reduction_factor²")
        return v

    @field_validator("reduction_factor")
    @classmethod
    def _reduction(cls, v: int) -> int:
        if v < 2:
            raise ValueError("early_stopping.reduction_factor must be at least 2 (successive halving keeps 1 in "
                             "this many trials at each rung)")
        return v

    @property
    def enabled(self) -> bool:
        return self.type != "none"


class RefineConfig(_Section):
    """Retrain the front after the search (``gpnas refine`` on a finished one): the trials of the first ``top``
    non-dominated ranks (0: off; 1: the front; 2: the front and the rank behind it), at most ``max_trials`` of
    them, each for ``budget_multiplier`` × the trial budget with ``seeds`` seeds (the search's seed and the next
    ones). The refined front (mean AP over the seeds) is what ``gpnas pareto`` and ``gpnas export`` show."""

    top: int = 0
    budget_multiplier: float = 2.0
    seeds: int = 2
    max_trials: int = 6

    @model_validator(mode="after")
    def _valid(self) -> RefineConfig:
        if self.top < 0:
            raise ValueError("refine.top must be >= 0 (0: no refinement; 1: the front; 2: the front and the "
                             "rank behind it)")
        if not (self.budget_multiplier >= 1 and math.isfinite(self.budget_multiplier)):
            raise ValueError(f"refine.budget_multiplier must be >= 1 (the refined budget as a multiple of "
                             f"train's), got {self.budget_multiplier}")
        if self.seeds < 1:
            raise ValueError("refine.seeds must be >= 1 (training seeds per refined trial; 2 or more give a spread)")
        if self.max_trials < 1:
            raise ValueError("refine.max_trials must be >= 1 (the most trials refined)")
        return self


class StorageConfig(_Section):
    root: str = "runs"
    tracking_uri: str | None = None

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("storage.root must name a folder (the default is 'runs')")
        if Path(v).is_file():
            raise ValueError(f"storage.root {v!r} is a file, not a folder; point it at a folder (it is created if "
                             "missing) or move the file")
        return v


class PrescreenConfig(_Section):
    """Score proposals without training and train only the best (:mod:`gpnas.experiments.prescreen`).

    ``candidates``: how many proposals the sampler makes per pre-screen round (null: off, the default — turn it
    on when ``benchmarks/gp_prescreen.py`` shows it pays for your space); ``keep``: how many of them are trained;
    ``score``: ``surrogate`` (a model of AP fitted on the complete trials so far, ranking by the hypervolume a
    proposal would add at its predicted AP; proposals are trained unscreened until 5 trials are complete) or a
    zero-cost proxy: ``synflow``, ``grad_norm``, ``naswot``, ``maedet_entropy``. Needs the features it ranks by:
    ``gradient_path.zero_cost`` for a proxy."""

    candidates: int | None = None
    keep: int = 1
    score: str = "surrogate"

    @model_validator(mode="after")
    def _rules(self) -> PrescreenConfig:
        scores = ("surrogate", "synflow", "grad_norm", "naswot", "maedet_entropy")
        if self.score.removeprefix("zc_") not in scores:
            close = difflib.get_close_matches(self.score, scores, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"prescreen.score must be one of {', '.join(scores)}, got '{self.score}'{hint}")
        if self.candidates is not None and not (1 <= self.keep < self.candidates):
            raise ValueError(f"prescreen needs 1 <= keep < candidates (train the best keep of candidates "
                             f"proposals), got keep={self.keep}, candidates={self.candidates}")
        return self

    @property
    def enabled(self) -> bool:
        return self.candidates is not None


class GradientPathConfig(_Section):
    """The features logged per trial (none is an objective). ``structural``: the gradient-path metrics of each
    layer and their ``gp_*`` aggregates (from the graph alone); ``at_init``: gradient statistics of the fresh
    model on one val batch (``gp_init_*``, and ``gp_stage_*`` per detector part); ``zero_cost``: the
    training-free proxies synflow, grad-norm, NASWOT and MAE-DET's entropy (``zc_*``); ``measured``: gradient
    statistics of the trained model (``gp_grad_norm_mean`` ...). All go into the per-layer table
    ``gradient_path_layers.csv`` (with its schema) and the trial's MLflow metrics."""

    structural: bool = True
    at_init: bool = True
    zero_cost: bool = True
    measured: bool = True


class SearchConfig(_Section):
    """A whole search. ``objectives`` are registered names (:mod:`gpnas.objectives.definitions`: ap,
    gflops, latency_ms, ...), each with its fixed direction."""

    schema_version: int = CONFIG_SCHEMA_VERSION
    name: str = "search"
    space: SpaceConfig = SpaceConfig()
    objectives: tuple[str, ...] = ("ap", "gflops", "latency_ms")
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)  # keys: the registry's
    sampler: SamplerConfig = SamplerConfig()
    budget: BudgetConfig = BudgetConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    latency: LatencySection = LatencySection()  # type: ignore[valid-type]
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
                          tracking_uri=self.storage.tracking_uri)

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
def _keys(section: type) -> list[str]:
    if dataclasses.is_dataclass(section):
        return [f.name for f in dataclasses.fields(section)]
    return list(section.model_fields)  # type: ignore[attr-defined]


def _field_type(section: type, name: str) -> type | None:
    if dataclasses.is_dataclass(section):
        hint = typing.get_type_hints(section).get(name)
    else:
        field = section.model_fields.get(name)  # type: ignore[attr-defined]
        hint = field.annotation if field is not None else None
    is_section = isinstance(hint, type) and (dataclasses.is_dataclass(hint) or issubclass(hint, BaseModel))
    return hint if is_section else None


def _suggest(key: str, section: type) -> str:
    keys = _keys(section)
    close = difflib.get_close_matches(key, keys, n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(keys)}"


def _section_at(loc: tuple[Any, ...]) -> type | None:
    """The config section (pydantic model or dataclass) that holds the key at ``loc``."""
    section: type | None = SearchConfig
    for part in loc[:-1]:
        section = _field_type(section, str(part)) if section is not None and isinstance(part, str) else None
    return section


def format_config_error(err: ValidationError, source: str) -> str:
    """One line per problem, naming ``source`` and the dotted key. A rule over a whole section (a dataclass's
    ``__post_init__``, a model validator) names its keys in its message, so the section's dict is not repeated."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            section = _section_at(e["loc"])
            hint = _suggest(str(e["loc"][-1]), section) if section else ""
            lines.append(f"{source}: unknown key '{loc}'; {hint}")
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
    path = folder / "config.yaml"
    path.write_text("# resolved gpnas search config (saved by gpnas search)\n" + cfg.to_yaml())
    return path
