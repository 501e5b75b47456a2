"""Training-free ("zero-cost") NAS proxies: the baselines gpnas compares its gradient-path features against.

Each proxy scores a freshly initialised model from one or a few batches, without training:

- :func:`synflow`: synaptic flow of the sign-linearised network (Tanaka et al. 2020; Abdelfattah et al. 2021).
- :func:`grad_norm`: L2 norm of all conv/linear weight gradients after one backward (Abdelfattah et al. 2021).
- :func:`naswot`: log-determinant of the activation-code agreement kernel (Mellor et al. 2021).
- :func:`maedet_entropy`: Gaussian entropy of the backbone's stage feature maps (MAE-DET, Sun et al. 2022).

:func:`zero_cost_scores` runs a subset and returns a flat ``dict[str, float]`` (keys :data:`ZERO_COST_NAMES`
plus ``zc_seconds``) for the results table.

"Weights" are the ``weight`` tensors of Conv/ConvTranspose/Linear modules, as in the reference implementations;
YOLOR's ImplicitA/M parameters (shape 1×C×1×1) are channel scalings, not layers, so a rule on ``ndim > 1``
would wrongly count them.

No proxy changes the model it is given (parameters, buffers, training modes, requires_grad, ``.grad``):
synflow and maedet_entropy rewrite weights, so they work on a deep copy; grad_norm and naswot run the model
itself and restore its modes, flags and buffers (BatchNorm running statistics) afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ZERO_COST_NAMES", "grad_norm", "maedet_entropy", "mean_square_loss", "naswot", "synflow",
           "zero_cost_scores"]  # fmt: skip

#: Keys of :func:`zero_cost_scores` (``zc_seconds`` is always added). ``zc_synflow`` is log10 of synflow.
ZERO_COST_NAMES: tuple[str, ...] = ("zc_synflow", "zc_grad_norm", "zc_naswot", "zc_maedet_entropy")

_WEIGHTED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)  # fmt: skip
_BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Activation calls whose input sign gives NASWOT's binary code. Module activations (nn.SiLU, nn.ReLU, ...) call
# these too, so intercepting the functions catches both the modules and functional calls inside a forward.
_ACTIVATIONS = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6, F.leaky_relu,
    F.leaky_relu_, F.prelu, F.rrelu, F.elu, F.elu_, F.selu, F.celu, F.silu, F.hardswish, F.mish, F.gelu,
})  # fmt: skip

Outputs = Any  # a tensor, or a list / tuple / dict nesting of tensors


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """The conv/linear weight tensors, each once (tied weights are one tensor); ValueError if there are none."""
    seen: dict[int, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, _WEIGHTED) and isinstance(m.weight, torch.Tensor):
            seen.setdefault(id(m.weight), m.weight)
    if not seen:
        raise ValueError(
            f"{type(model).__name__} has no Conv or Linear layer with a weight; zero-cost proxies score those weights"
        )
    return list(seen.values())


def _flatten(outputs: Outputs) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, list, tuple or dict, nested)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in _flatten(item)]
    return []


def mean_square_loss(outputs: Outputs) -> torch.Tensor:
    """Default grad_norm loss: Σ over output tensors of mean(out²), a data-free stand-in for a training loss."""
    tensors = _flatten(outputs)
    if not tensors:
        raise ValueError(f"the model output holds no tensor (got {type(outputs).__name__})")
    return sum(t.pow(2).mean() for t in tensors)


def _forward(model: nn.Module, x: torch.Tensor) -> Outputs:
    """model(x), with a shape mismatch inside the forward reported as a ValueError naming the input shape."""
    try:
        return model(x)
    except (torch.OutOfMemoryError, NotImplementedError):
        raise
    except RuntimeError as err:
        raise ValueError(f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)}: {err}") from err


def _check_shape(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """One sample's shape (no batch dimension), e.g. (3, 160, 160), validated."""
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be one sample's shape of positive ints, e.g. (3, 160, 160); got {shape}")
    strides = getattr(model, "strides", None)
    if strides and len(shape) == 3 and any(d % max(strides) for d in shape[1:]):
        raise ValueError(
            f"input of shape {shape}: height and width must be multiples of the detector's largest stride "
            f"{max(strides)}"
        )
    return shape


def _check_images(model: nn.Module, images: object, *, min_batch: int = 1) -> torch.Tensor:
    """images: Tensor[B, ...] of floats, B >= min_batch; returned on the model's device and dtype."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a float tensor [B, ...]; got {type(images).__name__}")
    if not images.is_floating_point() or images.ndim < 2:
        raise ValueError(f"images must be a float tensor [B, ...]; got {images.dtype} of shape {tuple(images.shape)}")
    if images.shape[0] < min_batch:
        raise ValueError(f"images of shape {tuple(images.shape)}: this proxy needs a batch of at least {min_batch}")
    _check_shape(model, tuple(images.shape[1:]))
    w = _weights(model)[0]
    return images.detach().to(w.device, w.dtype)


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Put back every module's training mode, every parameter's requires_grad and every buffer on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _bn_free_copy(model: nn.Module) -> nn.Module:
    """A float64, eval-mode deep copy with every BatchNorm replaced by Identity and no parameter requiring grad."""
    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        if name and isinstance(m, _BATCH_NORMS):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, nn.Identity())
    net = net.double().eval()
    net.requires_grad_(False)
    for p in net.parameters():
        p.grad = None
    return net


def synflow(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Synaptic flow (Tanaka et al. 2020, "Pruning neural networks without any data"; as a NAS proxy,
    Abdelfattah et al. 2021, "Zero-cost proxies for lightweight NAS"): Σ over weights of Σ |θ ⊙ ∂R/∂θ|.

    On a float64 copy, every parameter is replaced by its absolute value and every BatchNorm by Identity; an
    all-ones input of ``input_shape`` (one sample, no batch dimension, e.g. (3, 64, 64)) runs through it and
    R = the sum of all outputs. BN is removed rather than put in eval mode because eval-mode BN still applies
    |γ|/σ and adds |β|, which makes the score depend on (possibly trained) BN statistics and breaks synflow's
    per-layer conservation (Σ θ ∂R/∂θ = R for each layer of a bias-free positive-homogeneous net); the
    reference implementation likewise scores networks built without BN.

    float64 suffices for our detectors: the log of the score grows about linearly with depth (≈ 3–4 nats per
    conv at default init) and stays far below the float64 limit (709 nats) from the nano presets to paper size.
    Returns ``inf`` if it overflows all the same.
    """
    shape = _check_shape(model, input_shape)
    _weights(model)
    net = _bn_free_copy(model)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = _weights(net)
    for w in weights:
        w.requires_grad_(True)
    x = torch.ones((1, *shape), dtype=torch.float64, device=weights[0].device)
    with torch.enable_grad():
        r = sum(t.sum() for t in _flatten(_forward(net, x)))
        if not isinstance(r, torch.Tensor) or not r.requires_grad:
            raise ValueError(f"{type(model).__name__}'s output holds no tensor that depends on its weights")
        grads = torch.autograd.grad(r, weights, allow_unused=True)
    score = sum(float((w.detach() * g).abs().sum()) for w, g in zip(weights, grads, strict=True) if g is not None)
    return score if math.isfinite(score) else math.inf


def grad_norm(
    model: nn.Module, images: torch.Tensor, loss_fn: Callable[[Outputs], torch.Tensor] | None = None
) -> float:
    """Gradient norm (Abdelfattah et al. 2021): sqrt(Σ over weights of ||∂L/∂W||²) for L = loss_fn(model(images)).

    images: Tensor[B, ...] (e.g. [B, 3, S, S]); loss_fn maps the raw output (tensor, list, tuple or dict) to a
    scalar, default :func:`mean_square_loss`. The model runs in train mode (BatchNorm on batch statistics, as
    in the training step the proxy stands for); gradients come from ``torch.autograd.grad``, so ``.grad``
    fields are untouched, and the BN running statistics it updates are restored.
    """
    x = _check_images(model, images)
    loss_fn = mean_square_loss if loss_fn is None else loss_fn
    weights = _weights(model)
    with _restored(model), torch.enable_grad():
        model.train()
        for w in weights:
            w.requires_grad_(True)
        loss = loss_fn(_forward(model, x))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ValueError("loss_fn must return a scalar tensor that depends on the model's weights")
        grads = torch.autograd.grad(loss.reshape(()), weights, allow_unused=True)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


class _CodeKernel(TorchFunctionMode):
    """Accumulates K = N_A − Hamming(c_i, c_j) over every activation call on a batch of ``batch`` images.

    The code of one activation call is ``input > 0`` per unit (for ReLU exactly the on/off pattern; for SiLU,
    LeakyReLU, GELU… the same sign split). Intercepting torch functions rather than hooking modules also
    catches activations applied functionally inside a block's forward."""

    def __init__(self, batch: int, device: torch.device) -> None:
        super().__init__()
        self.batch = batch
        self.kernel = torch.zeros(batch, batch, dtype=torch.float64, device=device)
        self.units = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        x = args[0] if args else None
        # A tensor whose first dim is not the batch is not one code per image (e.g. a reshaped attention map).
        if func in _ACTIVATIONS and isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == self.batch:
            codes = (x.detach() > 0).flatten(1).double()  # read before the call: in-place variants overwrite x
            on = codes.sum(1)
            hamming = on[:, None] + on[None, :] - 2.0 * codes @ codes.T
            self.kernel += codes.shape[1] - hamming
            self.units += codes.shape[1]
        return func(*args, **(kwargs or {}))


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021, "Neural architecture search without training"): log|det K| where
    K[i, j] = number of activation units on which images i and j have the same binary code (K = c cᵀ +
    (1 − c)(1 − c)ᵀ), c the concatenation of ``pre-activation > 0`` over every activation call.

    images: Tensor[B, ...], B >= 2. The model runs as initialised, in train mode (BatchNorm on batch
    statistics, as in the paper), which centres each channel so codes split across the batch; its BN running
    statistics are restored afterwards. Identical codes make K singular: the score is then ``-inf``.
    """
    x = _check_images(model, images, min_batch=2)
    codes = _CodeKernel(x.shape[0], x.device)
    with _restored(model), torch.no_grad():
        model.train()
        with codes:
            _forward(model, x)
    if codes.units == 0:
        raise ValueError(
            f"naswot found no activation call (ReLU, SiLU, LeakyReLU, GELU, …) in {type(model).__name__}'s forward"
        )
    return float(torch.linalg.slogdet(codes.kernel).logabsdet)


class _StopForward(Exception):
    """Raised from the last stage's hook: the layers after it do not enter the score, so they are not run."""


def _stage_names(model: nn.Module, stages: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(chain, scored): names of the submodules applied one after another, and those whose outputs are scored."""
    stem, body = getattr(model, "stem", None), getattr(model, "stages", None)
    if stages is None and isinstance(stem, nn.Module) and isinstance(body, nn.ModuleList):
        scored = [f"stages.{i}" for i in range(len(body))]  # the Detector; its stem only carries the scale
        return ["stem", *scored], scored
    if stages is None and isinstance(model, nn.Sequential):
        names = [name for name, _ in model.named_children()]
        return names, names
    if stages is None:
        raise ValueError(
            f"maedet_entropy cannot find the backbone stages of {type(model).__name__}: pass stages=[names of the "
            "submodules applied one after another, e.g. 'backbone.layer1', ...]"
        )
    names = list(stages)
    if not names:
        raise ValueError("stages must name at least one submodule")
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"stages: {type(model).__name__} has no submodule '{name}'") from None
    return names, names


def _stage_weights(weights: Sequence[float] | str | None, count: int) -> list[float]:
    if weights == "index":
        return [s / (count * (count + 1) / 2) for s in range(1, count + 1)]
    if weights is None:
        return [1.0 / count] * count
    if isinstance(weights, str) or len(weights) != count:
        raise ValueError(f"weights must be 'index', None or {count} numbers (one per scored stage); got {weights!r}")
    return [float(w) for w in weights]


def _normalised(output: object, name: str) -> tuple[float, torch.Tensor]:
    """(log σ, output / σ) for one stage's feature map; scaled by max|x| first so σ² cannot overflow."""
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"stage '{name}' returns {type(output).__name__}, not one feature-map tensor")
    peak = output.abs().max()
    if not torch.isfinite(peak):
        raise ValueError(f"stage '{name}' overflowed float64; split it into finer stages=")
    if peak == 0:
        return -math.inf, output
    std = peak * (output / peak).std(correction=0)
    return float(torch.log(std)), output / std


def _chain_log_stds(net: nn.Module, names: list[str], x: torch.Tensor) -> list[float]:
    """log σ of each stage's output in the un-normalised network: each stage sees its predecessor's output
    divided by its std (as MAE-DET normalises blocks), and log σ accumulates along the chain."""
    logs: list[float] = []
    expected: list[torch.Tensor] = []

    def hook(name: str, last: bool) -> Callable[..., torch.Tensor]:
        def fn(module: nn.Module, inputs: tuple[Any, ...], output: object) -> torch.Tensor:
            if expected and (not inputs or inputs[0] is not expected[0]):
                raise ValueError(
                    f"stage '{name}' does not take the previous stage's output; stages= must name "
                    "submodules applied one after another"
                )
            log_std, out = _normalised(output, name)
            logs.append(log_std + (logs[-1] if logs else 0.0))
            expected[:] = [out]
            if last:
                raise _StopForward
            return out

        return fn

    handles = [net.get_submodule(n).register_forward_hook(hook(n, i == len(names) - 1)) for i, n in enumerate(names)]
    try:
        _forward(net, x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(logs) != len(names):
        raise ValueError(f"only {len(logs)} of the {len(names)} stages ran in {type(net).__name__}'s forward")
    return logs


def maedet_entropy(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    repeats: int = 1,
    seed: int = 0,
    weights: Sequence[float] | Literal["index"] | None = "index",
    stages: Sequence[str] | None = None,
    batch_size: int = 2,
) -> float:
    """MAE-DET entropy (Sun et al., ICML 2022, "Mathematical architecture design for deep CNN object detection",
    the zero-shot score of DAMO-YOLO's backbones): Σ_s w_s · log σ(F_s), the Gaussian differential entropy of
    the stage feature maps F_s up to constants, under N(0, 1) weights and a N(0, 1) input.

    On a float64 copy, conv/linear weights are drawn from N(0, 1) (biases 0) and BatchNorm is replaced by
    Identity: the score measures how the topology grows variance, which BN would erase. Stages: ``stages``
    (submodule names applied one after another), else a Detector's stem and backbone stages, scoring P2–P5
    (P3–P5 feed the neck; the stem only carries the scale), else a Sequential's children. Variance grows by
    about the fan-in per layer, so each stage's input is normalised to unit std and log σ accumulates across
    stages (exact for positively homogeneous stages, MAE-DET's block normalisation otherwise): deep nets stay
    finite. weights: ``"index"`` w_s = s / Σs (MAE-DET weights later stages more), ``None`` equal (1/S), or
    S numbers used as given. Averaged over ``repeats`` draws of weights and a [batch_size, *input_shape]
    input from ``seed``.
    """
    shape = _check_shape(model, input_shape)
    _weights(model)
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be at least 1; got {repeats} and {batch_size}")
    names, scored = _stage_names(model, stages)
    w = _stage_weights(weights, len(scored))
    net = _bn_free_copy(model)
    layers = [m for m in net.modules() if isinstance(m, _WEIGHTED)]
    device = layers[0].weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    scores = []
    with torch.no_grad():
        for _ in range(repeats):
            for m in layers:
                m.weight.normal_(0.0, 1.0, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            x = torch.randn((batch_size, *shape), generator=gen, dtype=torch.float64, device=device)
            logs = dict(zip(names, _chain_log_stds(net, names, x), strict=True))
            scores.append(sum(ws * logs[n] for ws, n in zip(w, scored, strict=True)))
    return sum(scores) / repeats


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf


def zero_cost_scores(
    model: nn.Module,
    images: torch.Tensor,
    input_shape: Sequence[int] | None = None,
    loss_fn: Callable[[Outputs], torch.Tensor] | None = None,
    names: Sequence[str] = ZERO_COST_NAMES,
) -> dict[str, float]:
    """The proxies in ``names`` (a subset of :data:`ZERO_COST_NAMES`) plus ``zc_seconds``, their total time.

    ``zc_synflow`` is log10 of :func:`synflow` (it spans hundreds of orders of magnitude); ``zc_grad_norm``,
    ``zc_naswot`` and ``zc_maedet_entropy`` are as their functions return them. images: Tensor[B, ...] feeds
    grad_norm and naswot (B >= 2); input_shape (one sample, default images.shape[1:]) sizes synflow's
    all-ones input and MAE-DET's Gaussian batch of B.
    """
    for name in names:
        if name not in ZERO_COST_NAMES:
            close = difflib.get_close_matches(name, ZERO_COST_NAMES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown zero-cost proxy '{name}'; {hint}valid names: {', '.join(ZERO_COST_NAMES)}")
    x = _check_images(model, images, min_batch=2 if "zc_naswot" in names else 1)
    shape = _check_shape(model, tuple(x.shape[1:]) if input_shape is None else input_shape)
    proxies: dict[str, Callable[[], float]] = {
        "zc_synflow": lambda: _log10(synflow(model, shape)),
        "zc_grad_norm": lambda: grad_norm(model, x, loss_fn),
        "zc_naswot": lambda: naswot(model, x),
        "zc_maedet_entropy": lambda: maedet_entropy(model, shape, batch_size=x.shape[0]),
    }
    scores: dict[str, float] = {}
    start = time.perf_counter()
    for key in ZERO_COST_NAMES:
        if key in names:
            scores[key] = float(proxies[key]())
    scores["zc_seconds"] = time.perf_counter() - start
    return scores
