"""The sections of a search config (:class:`gpnas.experiments.config.SearchConfig`), one type per concept.

The sections that belong to a lower floor are that floor's frozen dataclasses, read with
:func:`gpnas.search_space.sections.from_mapping` and checked by their own ``__post_init__``: ``train`` is
:class:`~gpnas.trainers.train_config.TrainConfig`, each ``space.genes`` entry a :class:`~gpnas.search_space.space.Gene`,
and ``latency`` holds the keys of :class:`~gpnas.objectives.latency.LatencyProtocol`. The sections that only a
search has are pydantic models, checked by their validators. Every message names its key as ``section.key``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, field_validator, model_validator

from gpnas.objectives.definitions import CONSTRAINTS
from gpnas.objectives.latency import LatencyProtocol
from gpnas.search_space.sections import from_mapping, section_keys, to_mapping, unknown_key
from gpnas.search_space.space import Gene, genes_from_config
from gpnas.trainers.augment import Augment
from gpnas.trainers.train_config import TrainConfig

__all__ = ["DIGITS_N_TRAIN", "DIGITS_N_VAL", "BudgetConfig", "ConstraintsConfig", "DataConfig",
           "EarlyStoppingConfig", "GradientPathConfig", "LatencyConfig", "PrescreenConfig", "RefineConfig",
           "SamplerConfig", "SpaceConfig", "StorageConfig", "TrainSection"]

#: The bundled digits set's size.
DIGITS_N_TRAIN, DIGITS_N_VAL = 2000, 300


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _train(value: Any) -> TrainConfig:
    return from_mapping(TrainConfig, value, section="train")


#: The ``train`` section: the trainer's own config type, its keys and rules (``train.hyp`` is its LossHyp).
TrainSection = Annotated[TrainConfig, PlainValidator(_train), PlainSerializer(lambda cfg: to_mapping(cfg))]
#: ``space.genes``: gene name -> :class:`Gene` (its config keys: choices, range, step, log, fixed, per_stage).
GeneSection = Annotated[dict[str, Gene], PlainValidator(genes_from_config), PlainSerializer(
    lambda genes: {name: to_mapping(gene, exclude=("name", "integer")) for name, gene in genes.items()})]


class SpaceConfig(_Section):
    """The base spec (a preset name or a spec file), the genes that vary over it (:class:`Gene`) and whether the
    anchors are the base's or fitted to the data (``auto``)."""

    base: str = "yolor-csp-nano"
    genes: GeneSection = {}
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
                raise unknown_key(key, "constraints", list(CONSTRAINTS))
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


#: The latency section's protocol keys: all of LatencyProtocol's but ``img_size``, which is the candidate's.
_PROTOCOL_KEYS = section_keys(LatencyProtocol, exclude=("img_size",))


class LatencyConfig(_Section):
    """The latency protocol of every trial: the keys of :class:`LatencyProtocol` (device, batch, dtype, warmup,
    ...; not ``img_size``, which is the candidate's), checked by its own rules; ``enabled: false`` skips it.

    ``mode``: ``predicted`` (default) sums the per-layer table of this machine (measured once, quietly, and then
    only read: the same figure on a quiet or a busy machine); ``measured`` times each candidate end to end, while
    the trials training on this machine pause; ``both`` records both and optimises the prediction.
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    __pydantic_extra__: dict[str, Any]  # the protocol's keys (checked below)

    enabled: bool = True
    mode: Literal["predicted", "measured", "both"] = "predicted"

    @model_validator(mode="before")
    @classmethod
    def _protocol_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = [*cls.model_fields, *_PROTOCOL_KEYS]
        for key in data:
            if key not in keys:
                raise unknown_key(key, "latency", keys)
        defaults = {f.name: f.default for f in fields(LatencyProtocol) if f.name in _PROTOCOL_KEYS}
        return {**defaults, **data}

    @model_validator(mode="after")
    def _valid_protocol(self) -> LatencyConfig:
        try:  # the protocol's own rules, checked when the config is read
            self.protocol(img_size=32)
        except ValueError as err:
            raise ValueError(str(err).replace("LatencyProtocol.", "latency.")) from None
        except TypeError as err:
            raise ValueError(f"latency: {err}; each protocol key takes one value (e.g. dtype: fp32)") from None
        return self

    def protocol(self, *, img_size: int) -> LatencyProtocol:
        """The protocol of a candidate of input side ``img_size``."""
        return LatencyProtocol(img_size=img_size, **self.__pydantic_extra__)

    @property
    def device(self) -> str:
        return str(self.__pydantic_extra__["device"])


class EarlyStoppingConfig(_Section):
    """Asynchronous successive halving inside Ray Tune (:mod:`gpnas.experiments.successive_halving`).

    ``type``: ``none`` (every candidate trains its whole budget), ``asha`` (rank at each rung by the score alone:
    the first objective measured in training, ``val_loss`` or ``ap``) or ``mo-asha`` (rank by Pareto rank on the
    search's objectives with the score taken at the rung, ties by hypervolume contribution). Rungs at budget/η,
    budget/η², ... (η = ``reduction_factor``, rounded) down to ``min_budget``, in the trainer's work unit
    (``train.steps``, else ``train.epochs``); at each rung a trial continues when it is in the top 1/η of the
    trials seen there. ``min_budget`` null: budget/η² (two rungs).
    """

    type: Literal["none", "asha", "mo-asha"] = "none"
    min_budget: int | None = None
    reduction_factor: int = 3

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("asha" in data or "grace_period" in data):
            old = data.get("asha")
            kind = "none" if old is False else "asha (the score only) or mo-asha (Pareto rank)"
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
    ones). The refined front (mean AP over the seeds) is what ``gpnas pareto`` and ``gpnas export`` show.
    ``include``: trials refined beside the front whatever their rank (not counted in ``max_trials``), each a trial
    number or a preset name or spec file the search enqueued (to compare hand-designed points at the same budget)."""

    top: int = 0
    budget_multiplier: float = 2.0
    seeds: int = 2
    max_trials: int = 6
    include: tuple[str, ...] = ()

    @field_validator("include", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value

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
