"""ArchSpec: one point of the gradient-path design space, as a frozen, validated, hashable value.

No torch import here: the driver that samples candidates stays light (DESIGN.md).

Genes (ARCH_SPEC §2, §3.6):
- ``block`` of the four backbone stages P2..P5: ``residual`` (Darknet residual; ``mask_ratio`` r: 1 = ResNet,
  0.5 = PRN, 0 = plain), ``csp`` (``split_ratio``, ``fusion``, ``split_mode``, and the inner residual's
  ``mask_ratio``: CSP and PRN compose) or ``elan`` (``backbone_stacks`` = depth of each computational block,
  ``elan_blocks`` = computational blocks per ELAN).
- neck ``fpn`` | ``csp-pan`` | ``elan-pan`` (``neck_stacks`` = depth of each neck computational block), ``spp``,
  ``head`` (``detect`` or ``seg``, the latter for size accounting against the paper), scaling
  (``width_multiple``, ``depth_multiple``, ``img_size``), ``num_classes`` and ``anchors``.
- Per-stage genes take one value for all four stages (as in the paper) or a list of four.

``arch_id`` hashes the canonical form: genes that the chosen block/neck does not use are left out, so two specs
that build the same model share an id, in any process.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from gpnas.errors import SpecError
from gpnas.search_space.yaml_load import DuplicateKeyError, load_yaml

SCHEMA_VERSION = 1
NUM_STAGES = 4
#: Upper bounds that keep a spec's arithmetic and build time sane (the paper's depth genes are at most 8, its
#: widths at most 1280 channels, its inputs at most 1280 px; COCO has 80 classes). Whether a spec is too large to
#: build is decided by its parameter count, which the builder checks against ``builder.MAX_PARAMS``.
MAX_DEPTH_GENE = 64
MAX_DEPTH_MULTIPLE = 4.0
MAX_WIDTH = 16384
MAX_WIDTH_MULTIPLE = 64.0
MAX_IMG_SIZE = 4096
MAX_NUM_CLASSES = 100_000

Block = Literal["residual", "csp", "elan"]
Fusion = Literal["both", "first", "last", "none"]
SplitMode = Literal["conv", "channel"]
Neck = Literal["fpn", "csp-pan", "elan-pan"]
Spp = Literal["spp", "sppf", "sppcspc"]
Head = Literal["detect", "seg"]
Stem = Literal["darknet", "yolov7", "yolov5"]
Downsample = Literal["conv", "mp"]

ANCHORS_V3: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
ANCHORS_YOLOR: tuple[tuple[tuple[int, int], ...], ...] = (
    ((12, 16), (19, 36), (40, 28)),
    ((36, 75), (76, 55), (72, 146)),
    ((142, 110), (192, 243), (459, 401)),
)

#: Genes each backbone block uses; the others are left out of arch_id and of the exported YAML.
BLOCK_GENES: dict[str, tuple[str, ...]] = {
    "residual": ("repeats", "mask_ratio"),
    "csp": ("repeats", "mask_ratio", "split_ratio", "fusion", "split_mode"),
    "elan": ("backbone_stacks", "elan_blocks"),
}
NECK_GENES: dict[str, tuple[str, ...]] = {
    "fpn": ("neck_repeats",),
    "csp-pan": ("neck_repeats",),
    "elan-pan": ("neck_stacks", "neck_blocks"),
}
PER_STAGE = ("repeats", "mask_ratio", "split_ratio", "fusion", "split_mode", "backbone_stacks", "elan_blocks")


def _per_stage(value: Any, field: str) -> tuple[Any, ...]:
    """One value for all stages, or a list of exactly four (P2, P3, P4, P5)."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(
                f"{field} takes one value for all stages or a list of {NUM_STAGES} (P2, P3, P4, P5); "
                f"got a list of {len(value)}: {list(value)}"
            )
        return tuple(value)
    return (value,) * NUM_STAGES


class ArchSpec(BaseModel):
    """A detector architecture. Frozen; every field is validated when the spec is made."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    schema_version: int = SCHEMA_VERSION
    name: str | None = None
    # scaling
    width_multiple: float = 1.0
    depth_multiple: float = 1.0
    img_size: int = 640
    # backbone
    stem: Stem = "darknet"
    widths: tuple[int, int, int, int] = (128, 256, 512, 1024)
    downsample: Downsample = "conv"
    block: Block = "residual"
    repeats: tuple[int, int, int, int] = (2, 8, 8, 4)
    mask_ratio: tuple[float, float, float, float] = (1.0,) * 4
    split_ratio: tuple[float, float, float, float] = (0.5,) * 4
    fusion: tuple[Fusion, Fusion, Fusion, Fusion] = ("both",) * 4
    split_mode: tuple[SplitMode, SplitMode, SplitMode, SplitMode] = ("conv",) * 4
    backbone_stacks: tuple[int, int, int, int] = (2,) * 4
    elan_blocks: tuple[int, int, int, int] = (2,) * 4
    # neck and head
    neck: Neck = "fpn"
    spp: Spp = "spp"
    neck_repeats: int = 2
    neck_stacks: int = 1
    neck_blocks: int = 4
    head_widths: tuple[int, int, int] = (256, 512, 1024)
    head: Head = "detect"
    implicit: bool = False
    num_classes: int = 80
    anchors: tuple[tuple[tuple[float, float], ...], ...] = ANCHORS_V3

    @field_validator(*PER_STAGE, mode="before")
    @classmethod
    def _expand(cls, value: Any, info: Any) -> tuple[Any, ...]:
        return _per_stage(value, info.field_name)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported; this gpnas reads version {SCHEMA_VERSION}")
        return value

    @field_validator("mask_ratio")
    @classmethod
    def _mask(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for r in value:
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"mask_ratio must lie in [0, 1] (1 = ResNet, 0.5 = PRN, 0 = plain); got {r}")
        return value

    @field_validator("split_ratio")
    @classmethod
    def _split(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for s in value:
            if not 0.0 < s < 1.0:
                raise ValueError(f"split_ratio must lie strictly between 0 and 1 (the paper uses 0.5); got {s}")
        return value

    @field_validator("repeats", "backbone_stacks", "elan_blocks")
    @classmethod
    def _positive_stage(cls, value: tuple[int, ...], info: Any) -> tuple[int, ...]:
        for n in value:
            if n < 1:
                raise ValueError(f"{info.field_name} must be at least 1 in every stage; got {list(value)}")
            if n > MAX_DEPTH_GENE:
                raise ValueError(f"{info.field_name} must be at most {MAX_DEPTH_GENE} in every stage (scale depth "
                                 f"with depth_multiple); got {list(value)}")
        return value

    @field_validator("neck_repeats", "neck_stacks", "neck_blocks")
    @classmethod
    def _depth(cls, value: int, info: Any) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be at least 1; got {value}")
        if value > MAX_DEPTH_GENE:
            raise ValueError(f"{info.field_name} must be at most {MAX_DEPTH_GENE} (scale depth with depth_multiple); "
                             f"got {value}")
        return value

    @field_validator("num_classes")
    @classmethod
    def _classes(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"num_classes must be at least 1; got {value}")
        if value > MAX_NUM_CLASSES:
            raise ValueError(f"num_classes must be at most {MAX_NUM_CLASSES:,}; got {value}")
        return value

    @field_validator("width_multiple", "depth_multiple")
    @classmethod
    def _multiple(cls, value: float, info: Any) -> float:
        top = MAX_WIDTH_MULTIPLE if info.field_name == "width_multiple" else MAX_DEPTH_MULTIPLE
        if not 0.0 < value <= top:
            raise ValueError(f"{info.field_name} must lie in (0, {top:g}]; got {value}")
        return value

    @field_validator("img_size")
    @classmethod
    def _img(cls, value: int) -> int:
        if value < 32 or value % 32:
            raise ValueError(f"img_size must be a positive multiple of 32 (the largest stride); got {value}")
        if value > MAX_IMG_SIZE:
            raise ValueError(f"img_size must be at most {MAX_IMG_SIZE} pixels (the paper trains at 640 to 1280); "
                             f"got {value}")
        return value

    @field_validator("widths", "head_widths")
    @classmethod
    def _widths(cls, value: tuple[int, ...], info: Any) -> tuple[int, ...]:
        if any(w < 1 for w in value):
            raise ValueError(f"{info.field_name} must all be positive; got {list(value)}")
        if any(w > MAX_WIDTH for w in value):
            raise ValueError(f"{info.field_name} must all be at most {MAX_WIDTH} channels (scale them with "
                             f"width_multiple); got {list(value)}")
        return value

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, value: tuple[tuple[tuple[float, float], ...], ...]) -> Any:
        if len(value) != 3 or any(len(level) != len(value[0]) or not level for level in value):
            raise ValueError("anchors must be 3 levels (P3, P4, P5) with the same number of (w, h) pairs each")
        if not all(0 < w < math.inf and 0 < h < math.inf for level in value for w, h in level):
            raise ValueError("anchor widths and heights must be positive, finite pixels")
        return value

    @model_validator(mode="after")
    def _channels(self) -> ArchSpec:
        _check_channels(self)
        return self

    # ---------------------------------------------------------------- identity and serialisation
    def canonical(self) -> dict[str, Any]:
        """The genes that determine the model (unused genes and ``name`` dropped), JSON-ready."""
        data = self.model_dump(mode="json")
        data.pop("name")
        unused = {g for genes in BLOCK_GENES.values() for g in genes} - set(BLOCK_GENES[self.block])
        unused |= {g for genes in NECK_GENES.values() for g in genes} - set(NECK_GENES[self.neck])
        for gene in unused:
            data.pop(gene)
        return data

    @property
    def arch_id(self) -> str:
        """12 hex digits of SHA-1 over the canonical JSON; identical across processes and machines."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Canonical genes plus ``name``; uniform per-stage lists collapse to one value."""
        data = self.canonical()
        for key in PER_STAGE:
            if key in data and len(set(map(json.dumps, data[key]))) == 1:
                data[key] = data[key][0]
        if self.name:
            data = {"name": self.name, **data}
        return data

    def to_yaml(self) -> str:
        header = f"# gpnas architecture spec, arch_id {self.arch_id}\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> ArchSpec:
        """A new validated spec with some genes changed."""
        return ArchSpec.from_dict({**self.model_dump(), **changes})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "spec") -> ArchSpec:
        """Validate a mapping; errors become one readable SpecError naming ``source``."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: an architecture spec must be a mapping of genes, got {type(data).__name__}")
        try:
            return cls(**dict(data))
        except ValidationError as err:
            raise SpecError(format_validation_error(err, source, cls.model_fields)) from None


def _scaled(width: int, multiple: float) -> int:
    return round(width * multiple)


def _check_channels(spec: ArchSpec) -> None:
    """Reject scalings that leave any layer with no channels, before anything is built."""
    wm = spec.width_multiple
    for i, width in enumerate(spec.widths):
        c = _scaled(width, wm)
        need = {"residual": 2, "csp": 2, "elan": 4}[spec.block]
        if spec.block == "csp":
            c_b = round(spec.split_ratio[i] * c)
            if c_b < 1 or c - c_b < 1:
                raise ValueError(
                    f"split_ratio {spec.split_ratio[i]} of stage P{i + 2} ({c} channels after width_multiple "
                    f"{wm}) leaves a part with 0 channels; raise width_multiple or move split_ratio toward 0.5"
                )
        if c // need < 1:
            raise ValueError(
                f"widths[{i}] = {width} × width_multiple {wm} gives {c} channels, too few for a {spec.block} "
                f"stage (needs at least {need}); raise width_multiple or the width"
            )
    for i, width in enumerate(spec.head_widths):
        if _scaled(width, wm) // 4 < 1:
            raise ValueError(
                f"head_widths[{i}] = {width} × width_multiple {wm} gives {_scaled(width, wm)} channels, too few "
                "for the neck (needs at least 4); raise width_multiple or the width"
            )


def format_validation_error(err: ValidationError, source: str, fields: Mapping[str, Any]) -> str:
    """One paragraph per problem: the field, the value, and what is allowed."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        field = str(e["loc"][0]) if e["loc"] else ""
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(fields)}"
            lines.append(f"{source}: unknown key '{field}'; {hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:
            lines.append(f"{source}: {msg}")
            continue
        value = e.get("input")
        lines.append(f"{source}: field '{loc}' = {value!r} is invalid: {msg}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> ArchSpec:
    """Read a spec from a YAML or JSON file; every problem is a SpecError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file; give a preset name (see `gpnas presets`) or a YAML path")
    try:
        data = load_yaml(path.read_text(), str(path))
    except DuplicateKeyError as err:
        raise SpecError(str(err)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}; fix the file or export one with --export-spec") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; a spec is a YAML mapping of genes") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec file must hold a YAML mapping of genes, found {type(data).__name__}")
    return ArchSpec.from_dict(data, source=str(path))
