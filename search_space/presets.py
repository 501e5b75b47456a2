"""Named points of the space: the paper's models at paper scale, and CPU-sized ``-nano`` versions.

Paper scale follows ARCH_SPEC §3 (640×640, 80 classes, width = depth = 1.0). The nano versions keep each family's
topology at width 1/8, depth 1/3, 160×160 and 10 classes (the bundled digits set), small enough to proxy-train
in about a minute on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpnas.errors import SpecError
from gpnas.search_space.spec import ANCHORS_V3, ANCHORS_YOLOR, ArchSpec

#: Anchors for the digits set at 160×160 (boxes of about 10–64 px), 3 per level.
ANCHORS_DIGITS = (
    ((9, 11), (13, 15), (17, 20)),
    ((22, 26), (28, 33), (35, 41)),
    ((43, 50), (52, 60), (62, 72)),
)

_V3: dict[str, Any] = {
    "stem": "darknet",
    "block": "residual",
    "repeats": [2, 8, 8, 4],
    "mask_ratio": 1.0,
    "neck": "fpn",
    "spp": "spp",
    "anchors": ANCHORS_V3,
}
_CSP: dict[str, Any] = {
    **_V3,
    "block": "csp",
    "fusion": "both",
    "neck": "csp-pan",
    "spp": "sppcspc",
    "implicit": True,
    "anchors": ANCHORS_YOLOR,
}
_ELAN: dict[str, Any] = {
    "stem": "yolov7",
    "widths": [256, 512, 1024, 1024],
    "downsample": "mp",
    "block": "elan",
    "backbone_stacks": 2,
    "elan_blocks": 2,
    "neck": "elan-pan",
    "neck_stacks": 1,
    "neck_blocks": 4,
    "spp": "sppcspc",
    "implicit": True,
    "anchors": ANCHORS_YOLOR,
}
_NANO: dict[str, Any] = {
    "width_multiple": 0.125,
    "depth_multiple": 0.34,
    "img_size": 160,
    "num_classes": 10,
    "anchors": ANCHORS_DIGITS,
}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    description: str
    genes: dict[str, Any]

    def spec(self) -> ArchSpec:
        return ArchSpec.from_dict({"name": self.name, **self.genes}, source=f"preset {self.name}")


_PAPER = [
    Preset("yolor-v3", "yolor-v3", "YOLOR-v3 = YOLOv3-SPP: Darknet-53, FPN neck (paper baseline)", _V3),
    Preset("yolor-prn", "yolor-prn", "YOLOR-PRN: YOLOR-v3 with masked residuals r=0.5 in the backbone",
           {**_V3, "mask_ratio": 0.5}),
    Preset("yolor-csp", "yolor-csp", "YOLOR-CSP: CSP stages (fusion both), CSP-PAN neck, SPPCSPC", _CSP),
    Preset("yolor-csp-fusion-first", "yolor-csp", "YOLOR-CSP with fusion first (concat -> transition)",
           {**_CSP, "fusion": "first"}),
    Preset("yolor-csp-fusion-last", "yolor-csp", "YOLOR-CSP with fusion last (transition -> concat)",
           {**_CSP, "fusion": "last"}),
    Preset("yolor-csp-no-fusion", "yolor-csp", "YOLOR-CSP without fusion transitions",
           {**_CSP, "fusion": "none"}),
    Preset("yolor-elan", "yolor-elan", "YOLOR-ELAN = ELAN-{2,1} = the yolov7 topology", _ELAN),
    Preset("yolor-elan-1-1", "yolor-elan", "ELAN-{1,1}: backbone and neck blocks of depth 1",
           {**_ELAN, "backbone_stacks": 1, "neck_stacks": 1}),
    Preset("yolor-elan-2-2", "yolor-elan", "ELAN-{2,2}: backbone and neck blocks of depth 2",
           {**_ELAN, "backbone_stacks": 2, "neck_stacks": 2}),
]
_NANOS = [
    Preset(f"{family}-nano", family, f"CPU-sized {family} (width 1/8, depth 1/3, 160×160, 10 classes)",
           {**base, **_NANO})
    for family, base in (
        ("yolor-v3", _V3),
        ("yolor-prn", {**_V3, "mask_ratio": 0.5}),
        ("yolor-csp", _CSP),
        ("yolor-elan", _ELAN),
    )
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PAPER + _NANOS}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ArchSpec:
    """The spec of a named preset; an unknown name lists the valid ones."""
    try:
        return PRESETS[name].spec()
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(f"unknown preset '{name}'; {hint}valid presets: {', '.join(PRESETS)}") from None
