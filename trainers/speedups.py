"""Training speed settings: what ``TrainConfig``'s ``amp``, ``channels_last``, ``fused_optimizer`` and
``cudnn_benchmark`` switch on, resolved for a device. None of them changes what is trained (the loss, the data,
the schedule); they change the kernels, and with them the last bits of the weights.

Measured on 2 EPYC cores with AVX512-BF16 (benchmarks/speedup_probes.py for the single kernels,
benchmarks/training_throughput.py for the training step; printed output under benchmarks/results/):

* ``amp`` on CPU: the model's forward under bf16 autocast where the CPU has native bf16 (AVX512-BF16 or AMX);
  elsewhere bf16 is emulated and slower, so fp32 stays. On CUDA: fp16 autocast with gradient scaling. The loss
  is computed in fp32 either way.
* ``channels_last``: convolutions in the channels-last memory format, whose oneDNN kernels ran the nano
  models' thin convs 1.6–5× faster (forward + backward, bf16) than NCHW. On CPU, units with at most
  :data:`THIN_CHANNELS` output channels keep BN and SiLU in NCHW: channels-last BatchNorm + SiLU on 4 channels
  at 160² took 16.5 ms against 1.5 in NCHW (at 16 channels and more the two are close). On CUDA the layout is
  not applied: on an H200 (benchmarks/results/gpu_probe.txt) yolor-elan-nano trained at 97 images/s with every
  setting on against 230 with every setting off (batch 16; 696 against 1,487 at batch 128), and the same
  settings without channels-last ran at 249.
* ``fused_optimizer``: the optimiser's fused kernel (one call for all parameters instead of a loop), and
  gradient clipping over all gradients at once (foreach).
* ``cudnn_benchmark``: cuDNN times its algorithms once per input shape and keeps the fastest (CUDA only; the
  choice can differ between runs, so CUDA runs are not bit-reproducible with it — they are not without it
  either, because of atomic adds in the backward).

Not adopted: ``torch.compile``. Its compiled fp32 step ran 1.3–1.4× eager fp32, but compiling an architecture
took 133 s with an empty inductor cache and 62 s for a second architecture (4 s for one compiled before: inductor's
own on-disk cache is the per-architecture cache), against 30–40 s of training for the whole default 300-step
budget; a search trains a new architecture per trial, so it is not repaid. For the val forward,
``inference_mode`` did not pay (761 → 779 ms per 300 images) and a BN-folded copy saved 2 % (745 ms), ~0.02 s
per evaluation: not worth a model copy per evaluation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from gpnas.search_space.modules.common import ConvUnit
from gpnas.trainers.train_config import TrainConfig

__all__ = ["THIN_CHANNELS", "amp_dtype", "cpu_has_native_bf16", "input_format", "release_layout", "set_layout",
           "uses_channels_last"]

#: On CPU, conv units with at most this many output channels run BN and SiLU in NCHW (see the module docstring).
THIN_CHANNELS = 8
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in its flags). False where the flags
    cannot be read (not Linux): bf16 is then left off rather than guessed."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def amp_dtype(config: TrainConfig, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of the model's forward with ``config`` on ``device``, or None (fp32):
    fp16 on CUDA, bf16 on a CPU with native bf16, when ``config.amp``."""
    if not config.amp:
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def uses_channels_last(config: TrainConfig, device: torch.device | str) -> bool:
    """Whether ``config.channels_last`` applies on ``device``: on CPUs only (see the module docstring)."""
    return config.channels_last and torch.device(device).type == "cpu"


def input_format(config: TrainConfig, device: torch.device | str = "cpu") -> torch.memory_format:
    """The memory format of the training batches under ``config`` on ``device`` (channels-last where
    :func:`uses_channels_last`)."""
    return torch.channels_last if uses_channels_last(config, device) else torch.contiguous_format


def set_layout(model: nn.Module, config: TrainConfig, device: torch.device | str) -> nn.Module:
    """Put ``model`` in the memory layout that ``config.channels_last`` asks for on ``device`` (in place):
    4-D parameters channels-last and each :class:`ConvUnit`'s ``layout`` set. No-op when it is off or does not
    apply on ``device`` (:func:`uses_channels_last`)."""
    if not uses_channels_last(config, device):
        return model
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for unit in model.modules():
        if isinstance(unit, ConvUnit):
            thin = unit.out_channels <= THIN_CHANNELS
            unit.layout = "conv_channels_last" if thin else "channels_last"
    return model


def release_layout(model: nn.Module) -> nn.Module:
    """Undo :func:`set_layout` (in place): NCHW parameters and no unit layout, the model as built."""
    for unit in model.modules():
        if isinstance(unit, ConvUnit) and "layout" in vars(unit):
            del unit.layout
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return model
