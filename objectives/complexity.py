"""Params and GFLOPs in the paper's convention (ARCH_SPEC §5), counted by fvcore.

GFLOPs = 2 × fvcore multiply-adds of the *fused* model (BN folded, implicit layers folded), at the given input
size. fvcore's default handles also count nearest upsampling (1 per output element, as thop does) and ignore
element-wise adds, concatenation and activations, so PRN's masked add costs nothing. Every feature map of these
fully convolutional detectors is exactly S/stride wide, so the count is taken once at 64×64 and scaled by
(S/64)²; that equals profiling at S (checked in the tests).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gpnas.search_space.builder import Detector, build_detector, count_params
from gpnas.search_space.spec import ArchSpec

PAPER_IMG = 640
_TRACE_IMG = 64
_CACHE: dict[tuple[str, int], Complexity] = {}


@dataclass(frozen=True)
class Complexity:
    """Size of one architecture: params (unfused and fused), GFLOPs at ``img`` and at 640 (paper figures)."""

    arch_id: str
    img: int
    params: int
    params_fused: int
    gflops: float
    gflops_640: float

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fvcore_macs(model: nn.Module, img: int) -> float:
    """Multiply-adds of ``model`` on one 3×img×img input, by fvcore (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, img, img))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return float(analysis.total())


def gflops_of(fused: nn.Module, img: int) -> float:
    """Paper-convention GFLOPs (2 × MACs / 1e9) of an already fused detector at img×img."""
    macs = fvcore_macs(fused, _TRACE_IMG)
    return 2.0 * macs / 1e9 * (img / _TRACE_IMG) ** 2


def measure_complexity(spec: ArchSpec, *, img: int | None = None, model: Detector | None = None) -> Complexity:
    """Params and GFLOPs of ``spec`` at ``img`` (default: the spec's img_size); cached by (arch_id, img)."""
    img = spec.img_size if img is None else img
    key = (spec.arch_id, img)
    if key in _CACHE:
        return _CACHE[key]
    model = build_detector(spec) if model is None else model
    params = count_params(model)
    fused = copy.deepcopy(model).eval().fuse()
    macs64 = fvcore_macs(fused, _TRACE_IMG)
    result = Complexity(
        arch_id=spec.arch_id,
        img=img,
        params=params,
        params_fused=count_params(fused),
        gflops=2.0 * macs64 / 1e9 * (img / _TRACE_IMG) ** 2,
        gflops_640=2.0 * macs64 / 1e9 * (PAPER_IMG / _TRACE_IMG) ** 2,
    )
    _CACHE[key] = result
    return result
