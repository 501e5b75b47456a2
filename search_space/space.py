"""SearchSpace: which genes vary, over what, under which conditions (STYLE.md 3). No torch import.

``define(trial)`` is define-by-run over an Optuna trial (the searcher calls it on each asked trial);
``from_params`` turns the flat parameters it produced back into an ArchSpec; ``suggest(trial)`` does both.
Conditions: the CSP genes are sampled only for ``block: csp``, the residual mask for ``residual`` and ``csp``,
the ELAN stacks only for ``elan``, and the neck stacks only for the ``elan-pan`` neck. Sampling computes nothing.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gpnas.errors import ConfigError
from gpnas.search_space.sections import from_mapping, is_number
from gpnas.search_space.spec import NUM_STAGES, PER_STAGE, ArchSpec

#: gene -> (condition gene, values under which it is active)
CONDITIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mask_ratio": ("block", ("residual", "csp")),
    "repeats": ("block", ("residual", "csp")),
    "split_ratio": ("block", ("csp",)),
    "fusion": ("block", ("csp",)),
    "split_mode": ("block", ("csp",)),
    "backbone_stacks": ("block", ("elan",)),
    "elan_blocks": ("block", ("elan",)),
    "neck_stacks": ("neck", ("elan-pan",)),
    "neck_blocks": ("neck", ("elan-pan",)),
    "neck_repeats": ("neck", ("fpn", "csp-pan")),
}
_ORDER = ("block", "neck")  # condition genes are sampled first
_NOT_GENES = {"name", "schema_version", "anchors"}


class TrialLike(Protocol):
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


@dataclass(frozen=True)
class Gene:
    """One gene of the space, and one entry of a search config's ``space.genes``: ``choices``, a numeric
    ``range`` [low, high] (with ``step`` / ``log``) or a ``fixed`` value. ``per_stage: true`` samples one value per
    backbone stage (P2..P5) instead of one for all. ``integer`` (not a config key) samples whole numbers: set by
    :meth:`SearchSpace.from_config` when the base's value is an int and the range is whole."""

    name: str
    choices: tuple[Any, ...] | None = None
    range: tuple[float, float] | None = None
    step: float | None = None
    log: bool = False
    fixed: Any = None
    per_stage: bool = False
    integer: bool = False

    def __post_init__(self) -> None:
        key = f"space.genes.{self.name}"
        kinds = [k for k in ("choices", "range", "fixed") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ConfigError(f"{key}: give exactly one of choices, range or fixed (got {kinds or 'none'})")
        if self.choices is not None:
            if not isinstance(self.choices, (list, tuple)):
                raise ConfigError(f"{key}.choices must be a list of values, got {self.choices!r}")
            if not self.choices:
                raise ConfigError(f"{key}.choices must not be empty; list the values to sample from (or give "
                                  "fixed: for one value)")
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.range is not None:
            self._check_range(key)
        if self.step is not None and not (is_number(self.step) and self.step > 0):
            raise ConfigError(f"{key}.step must be a positive number, or null for a continuous range; got "
                              f"{self.step!r}")
        for flag in ("log", "per_stage", "integer"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{key}.{flag} must be true or false, got {getattr(self, flag)!r}")

    def _check_range(self, key: str) -> None:
        bounds = self.range
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(is_number(b) for b in bounds)):
            raise ConfigError(f"{key}.range must be two numbers [low, high], got {bounds!r}")
        low, high = float(bounds[0]), float(bounds[1])
        if low > high:
            raise ConfigError(f"{key}.range {[low, high]} must be [low, high] with low <= high; swap the two")
        object.__setattr__(self, "range", (low, high))

    @property
    def param_names(self) -> list[str]:
        return [f"{self.name}_p{i + 2}" for i in range(NUM_STAGES)] if self.per_stage else [self.name]

    @property
    def encoded(self) -> bool:
        """List-valued choices (e.g. widths) travel through Optuna as JSON strings."""
        return self.choices is not None and any(isinstance(c, (list, tuple)) for c in self.choices)

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded and isinstance(value, str) else value

    def encode(self, value: Any) -> Any:
        return json.dumps(list(value)) if self.encoded else value

    def sample(self, trial: TrialLike, param: str) -> Any:
        if self.choices is not None:
            return self.decode(trial.suggest_categorical(param, [self.encode(c) for c in self.choices]))
        assert self.range is not None
        low, high = self.range
        if self.integer:
            return trial.suggest_int(param, int(low), int(high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(param, low, high, step=self.step, log=self.log)

    def allows(self, value: Any) -> bool:
        if self.choices is not None:
            return self.encode(value) in [self.encode(c) for c in self.choices]
        if self.range is None:
            return value == self.fixed
        low, high = self.range
        if not (low - 1e-9 <= value <= high + 1e-9):
            return False
        if self.step:
            k = (value - low) / self.step
            return math.isclose(k, round(k), abs_tol=1e-6)
        return True

    def describe(self) -> str:
        stage = " per stage" if self.per_stage else ""
        if self.choices is not None:
            return f"{self.name}: one of {list(self.choices)}{stage}"
        if self.range is None:
            return f"{self.name}: fixed {self.fixed!r}"
        step = f" step {self.step}" if self.step else ""
        low, high = (int(self.range[0]), int(self.range[1])) if self.integer else self.range
        return f"{self.name}: {'int' if self.integer else 'float'} in [{low}, {high}]{step}{stage}"


def genes_from_config(genes: Any) -> dict[str, Gene]:
    """The ``space.genes`` mapping of a search config (gene name -> its keys) as Genes; ConfigError naming
    ``space.genes.<name>.<key>`` for an unknown key or a value a Gene refuses."""
    if not isinstance(genes, Mapping):
        raise ConfigError(f"space.genes must be a mapping of gene name -> choices, range or fixed, got {genes!r}")
    return {str(name): from_mapping(Gene, gene, section=f"space.genes.{name}", exclude=("name", "integer"),
                                    name=str(name)) for name, gene in genes.items()}


class SearchSpace:
    """Genes over a base spec: genes not listed keep the base's value."""

    def __init__(self, base: ArchSpec, genes: Mapping[str, Gene]) -> None:
        valid = [f for f in ArchSpec.model_fields if f not in _NOT_GENES]
        for name, gene in genes.items():
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"valid genes: {', '.join(valid)}"
                raise ConfigError(f"space.genes: unknown gene '{name}'; {hint}")
            if gene.per_stage and gene.fixed is None and name not in PER_STAGE:
                raise ConfigError(f"space.genes.{name}: per_stage is only for {', '.join(PER_STAGE)}")
        self.base = base
        self.genes = dict(genes)

    @classmethod
    def from_config(cls, base: ArchSpec, genes: Mapping[str, Gene | Mapping[str, Any]]) -> SearchSpace:
        """From a search config's ``space.genes`` (Genes, or their config mappings); a range samples whole
        numbers when the base's value is an int and the range and step are whole."""
        out = {}
        for name, gene in genes_from_config(genes).items():
            if gene.range is not None:
                base_value = getattr(base, name, None)
                first = base_value[0] if isinstance(base_value, tuple) else base_value
                whole = [*gene.range, *([] if gene.step is None else [gene.step])]
                integer = isinstance(first, int) and not isinstance(first, bool) \
                    and all(float(v).is_integer() for v in whole)
                gene = replace(gene, integer=integer)
            out[name] = gene
        return cls(base, out)

    def _active(self, name: str, values: Mapping[str, Any]) -> bool:
        if name not in CONDITIONS:
            return True
        cond, allowed = CONDITIONS[name]
        return values.get(cond, getattr(self.base, cond)) in allowed

    def _ordered(self) -> list[Gene]:
        return sorted(self.genes.values(), key=lambda g: (g.name not in _ORDER, _ORDER.index(g.name)
                                                          if g.name in _ORDER else 0, g.name))

    def define(self, trial: TrialLike) -> None:
        """Define-by-run: suggest every active gene on ``trial`` (conditions follow the sampled values)."""
        values: dict[str, Any] = {}
        for gene in self._ordered():
            if gene.fixed is not None or not self._active(gene.name, values):
                continue
            sampled = [gene.sample(trial, p) for p in gene.param_names]
            values[gene.name] = sampled if gene.per_stage else sampled[0]

    def from_params(self, params: Mapping[str, Any]) -> ArchSpec:
        """Flat Optuna parameters -> the validated spec (fixed genes applied, inactive genes ignored)."""
        changes: dict[str, Any] = {}
        for gene in self.genes.values():
            if gene.fixed is not None:
                changes[gene.name] = gene.fixed
            elif gene.per_stage and all(p in params for p in gene.param_names):
                changes[gene.name] = [params[p] for p in gene.param_names]
            elif gene.name in params:
                changes[gene.name] = gene.decode(params[gene.name])
        return self.base.replace(name=None, **changes)

    def suggest(self, trial: TrialLike) -> ArchSpec:
        self.define(trial)
        return self.from_params(trial.params)  # type: ignore[attr-defined]

    def contains(self, spec: ArchSpec) -> bool:
        """Whether ``spec`` is a point of this space: every gene the model uses is allowed by its Gene, and
        every gene outside the space equals the base's."""
        values = spec.model_dump()
        fixed = self.from_params({})  # base with the fixed genes applied, normalised
        for field in ArchSpec.model_fields:
            if field == "name" or (field in CONDITIONS and not self._active(field, values)):
                continue
            gene = self.genes.get(field)
            if gene is None or gene.fixed is not None:
                if values[field] != getattr(fixed, field):
                    return False
                continue
            items = list(values[field]) if field in PER_STAGE else [values[field]]
            if field in PER_STAGE and not gene.per_stage and len(set(items)) != 1:
                return False
            if not all(gene.allows(v) for v in items):
                return False
        return True

    def describe(self) -> str:
        lines = [f"base: {self.base.name or self.base.arch_id}"]
        for gene in self._ordered():
            cond = CONDITIONS.get(gene.name)
            when = f"  (when {cond[0]} in {list(cond[1])})" if cond else ""
            lines.append(f"  {gene.describe()}{when}")
        return "\n".join(lines)

    def to_params(self, spec: ArchSpec) -> dict[str, Any]:
        """The flat parameters that reproduce ``spec`` (to enqueue named points in a study)."""
        params: dict[str, Any] = {}
        dumped = spec.model_dump()
        for gene in self._ordered():
            if gene.fixed is not None or not self._active(gene.name, dumped):
                continue
            value = dumped[gene.name]
            if gene.per_stage:
                params.update(zip(gene.param_names, value, strict=True))
            else:
                params[gene.name] = gene.encode(value[0] if gene.name in PER_STAGE else value)
        return params
