"""The training speed settings (issue 18): each is active when selected, off when its knob is false, and none
changes the math — the same loss and gradients up to rounding, a model handed back as built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gpnas.errors import ConfigError
from gpnas.search_space.builder import build_detector
from gpnas.search_space.modules.common import ConvUnit, to_memory_format
from gpnas.search_space.presets import ANCHORS_DIGITS, get_preset
from gpnas.trainers import speedups
from gpnas.trainers.callbacks import Callback
from gpnas.trainers.data import to_model_input
from gpnas.trainers.datasets import ProxyData
from gpnas.trainers.digits import build_digits_dataset
from gpnas.trainers.loss import YoloLoss
from gpnas.trainers.proxy import ProxyTrainer, build_optimizer
from gpnas.trainers.train_config import TrainConfig

IMG = 64
OFF = {"amp": False, "channels_last": False, "fused_optimizer": False}
CL = torch.channels_last


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ProxyData:
    root = tmp_path_factory.mktemp("digits")
    build_digits_dataset(root, n_train=32, n_val=16)
    return ProxyData.digits(root=root, n_train=32, n_val=16, img_size=IMG, augment=False)


def _model(preset: str = "yolor-elan-nano") -> torch.nn.Module:
    scale = IMG / 160
    anchors = tuple(tuple((max(1, round(w * scale)), max(1, round(h * scale))) for w, h in level)
                    for level in ANCHORS_DIGITS)
    torch.manual_seed(0)
    return build_detector(get_preset(preset).replace(img_size=IMG, anchors=anchors))


class _Probe(Callback):
    """Records, at the first step, what the trainer's model and the autocast state were."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def on_fit_start(self, trainer: ProxyTrainer) -> None:
        model = trainer.model
        assert model is not None

        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self.seen.setdefault("autocast", torch.is_autocast_enabled("cpu"))
            self.seen.setdefault("autocast_dtype", torch.get_autocast_dtype("cpu"))
            self.seen.setdefault("input_channels_last", args[0].is_contiguous(memory_format=CL))
            self.seen.setdefault("threads", torch.get_num_threads())

        self._handle = model.register_forward_pre_hook(hook)

    def on_step_end(self, trainer: ProxyTrainer, losses: dict[str, float]) -> None:
        if "weights_channels_last" in self.seen:
            return
        model = trainer.model
        assert model is not None
        convs = [m.conv for m in model.modules() if isinstance(m, ConvUnit)]
        self.seen["weights_channels_last"] = all(c.weight.is_contiguous(memory_format=CL) and
                                                 c.weight.dim() == 4 for c in convs)
        self.seen["layouts"] = {m.layout for m in model.modules() if isinstance(m, ConvUnit)}
        self.seen["optimizer_fused"] = trainer.optimizer.defaults.get("fused")  # type: ignore[attr-defined]
        self._handle.remove()


def _fit(data: ProxyData, **knobs: object) -> tuple[dict[str, object], torch.nn.Module]:
    probe = _Probe()
    config = dataclasses.replace(TrainConfig(steps=2, batch_size=8, ema=False, threads=1), **knobs)
    model = _model()
    fit = ProxyTrainer(config, [probe]).fit(model, data)
    assert fit.model is model
    return probe.seen, model


def test_every_speed_setting_is_on_by_default_and_a_bool() -> None:
    config = TrainConfig()
    assert (config.amp, config.channels_last, config.fused_optimizer, config.cudnn_benchmark) == (True,) * 4
    for key in ("amp", "channels_last", "fused_optimizer", "cudnn_benchmark"):
        with pytest.raises(ConfigError, match=rf"train\.{key} must be true or false, got 'yes'"):
            TrainConfig(**{key: "yes"})  # type: ignore[arg-type]


def test_defaults_are_active_in_a_fit(data: ProxyData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "cpu_has_native_bf16", lambda: True)
    seen, model = _fit(data)
    assert seen["autocast"] is True and seen["autocast_dtype"] == torch.bfloat16
    assert seen["input_channels_last"] is True and seen["weights_channels_last"] is True
    # on CPU, units of <= 8 output channels keep BN in NCHW; the rest run wholly channels-last
    assert seen["layouts"] == {"conv_channels_last", "channels_last"}
    assert seen["optimizer_fused"] is True
    assert seen["threads"] == 1
    # the model comes back as built: NCHW parameters, no training layout
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(m.layout is None for m in model.modules() if isinstance(m, ConvUnit))


def test_knobs_off_run_the_plain_trainer(data: ProxyData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "cpu_has_native_bf16", lambda: True)
    seen, _ = _fit(data, **OFF)
    assert seen["autocast"] is False
    assert seen["input_channels_last"] is False and seen["weights_channels_last"] is False
    assert seen["layouts"] == {None}
    assert not seen["optimizer_fused"]


def test_amp_on_a_cpu_without_native_bf16_stays_fp32(data: ProxyData, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speedups, "cpu_has_native_bf16", lambda: False)
    seen, _ = _fit(data)
    assert seen["autocast"] is False
    assert speedups.amp_dtype(TrainConfig(), "cpu") is None
    assert speedups.amp_dtype(TrainConfig(), "cuda") == torch.float16
    assert speedups.amp_dtype(TrainConfig(amp=False), "cuda") is None


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_bf16, without, amx = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    amx.write_text("flags\t\t: avx2 amx_bf16 amx_tile\n")
    assert speedups.cpu_has_native_bf16(str(with_bf16)) is True
    assert speedups.cpu_has_native_bf16(str(amx)) is True
    assert speedups.cpu_has_native_bf16(str(without)) is False
    assert speedups.cpu_has_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fused_optimizer_knob_selects_the_fused_kernel(optimizer: str) -> None:
    model = _model("yolor-v3-nano")
    assert build_optimizer(model, TrainConfig(optimizer=optimizer)).defaults["fused"] is True  # type: ignore[arg-type]
    assert not build_optimizer(model, TrainConfig(optimizer=optimizer,  # type: ignore[arg-type]
                                                  fused_optimizer=False)).defaults.get("fused")


@pytest.mark.parametrize("preset", ["yolor-elan-nano", "yolor-prn-nano", "yolor-csp-nano"])
def test_channels_last_layout_keeps_the_math(data: ProxyData, preset: str) -> None:
    """The loss and the gradients with the layout are as close to a float64 reference as NCHW's are: other
    kernels round differently, the function is the same."""
    imgs, targets, _ = next(iter(data.train_loader(batch_size=8, seed=0)))

    def loss_and_grads(dtype: torch.dtype, channels_last: bool) -> tuple[float, torch.Tensor]:
        model = _model(preset).to(dtype).train()
        speedups.set_layout(model, TrainConfig(channels_last=channels_last), "cpu")
        loss_fn = YoloLoss(num_classes=data.num_classes, anchors=model.anchors, strides=model.strides,
                           img_size=IMG)
        x = to_model_input(imgs, "cpu", memory_format=CL if channels_last else torch.contiguous_format)
        loss, _ = loss_fn([p.double() for p in model(x.to(dtype))[:3]], targets.double())
        loss.backward()
        return loss.item(), torch.cat([p.grad.double().flatten() for p in model.parameters()])

    ref_loss, ref = loss_and_grads(torch.float64, False)
    errors = {}
    for channels_last in (False, True):
        loss, grads = loss_and_grads(torch.float32, channels_last)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        errors[channels_last] = ((grads - ref).norm() / ref.norm()).item()
    assert errors[False] < 1e-3
    assert errors[True] < max(5 * errors[False], 1e-5), errors


def test_layout_conversion_returns_the_gradient_in_the_input_format() -> None:
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = to_memory_format(x, CL)
    assert y.is_contiguous(memory_format=CL) and not y.is_contiguous()
    y.backward(torch.ones_like(y).contiguous(memory_format=CL))
    assert x.grad is not None and x.grad.is_contiguous()
    assert to_memory_format(y, CL) is y  # already there: no copy


def test_release_layout_restores_the_model_as_built() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speedups.set_layout(model, TrainConfig(), "cpu")
    assert {m.layout for m in model.modules() if isinstance(m, ConvUnit)} == {"conv_channels_last", "channels_last"}
    speedups.release_layout(model)
    assert all(m.layout is None for m in model.modules() if isinstance(m, ConvUnit))
    for key, value in model.state_dict().items():
        assert value.is_contiguous() and torch.equal(value, before[key])


def test_channels_last_is_not_applied_on_cuda() -> None:
    """On an H200 the channels-last layout halved the nano models' training images/s (speedups docstring)."""
    model = _model()
    assert speedups.set_layout(model, TrainConfig(), "cuda") is model
    assert all(m.layout is None for m in model.modules() if isinstance(m, ConvUnit))
    assert all(p.is_contiguous() for p in model.parameters())
    assert speedups.input_format(TrainConfig(), "cuda") == torch.contiguous_format
    assert speedups.input_format(TrainConfig(), "cpu") == CL
    assert speedups.input_format(TrainConfig(channels_last=False), "cpu") == torch.contiguous_format


def test_model_input_in_channels_last_has_the_same_values() -> None:
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    plain = to_model_input(batch, "cpu")
    last = to_model_input(batch, "cpu", memory_format=CL)
    assert plain.is_contiguous() and last.is_contiguous(memory_format=CL)
    assert torch.equal(plain, last)
