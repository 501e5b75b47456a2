"""Zero-cost proxies against closed forms on toy networks, their no-side-effect contract, and a real nano detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpnas.objectives.zero_cost import (
    ZERO_COST_NAMES,
    grad_norm,
    maedet_entropy,
    mean_square_loss,
    naswot,
    synflow,
    zero_cost_scores,
)
from gpnas.search_space.builder import build_detector
from gpnas.search_space.modules.common import ConvUnit
from gpnas.search_space.presets import get_preset

W1 = np.array([[0.5, -1.0, 2.0], [-0.25, 0.75, -1.5]])  # Linear(3 -> 2)
W2 = np.array([[1.0, -2.0], [0.5, 0.25], [-3.0, 1.0], [0.1, -0.2]])  # Linear(2 -> 4)


def linear(weight: np.ndarray) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()  # W2's 0.1 is not a float32
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    return layer


def linear_chain(depth: int, width: int) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)])


def index_weighted(log_sigmas: list[float]) -> float:
    """Σ w_s log σ_s with w_s = s / Σ s, the documented default stage weights."""
    total = len(log_sigmas) * (len(log_sigmas) + 1) / 2
    return sum(s / total * v for s, v in enumerate(log_sigmas, start=1))


# ------------------------------------------------------------------------------------------------ synflow
def test_synflow_two_layer_linear_is_twice_r() -> None:
    # Bias-free linear net: each layer's Σ θ ∂R/∂θ equals R = 1ᵀ|W2||W1|1, so synflow = 2R exactly.
    r = np.ones(4) @ np.abs(W2) @ np.abs(W1) @ np.ones(3)
    assert synflow(nn.Sequential(linear(W1), linear(W2)), (3,)) == pytest.approx(2 * r, rel=1e-12)


def test_synflow_ignores_batchnorm_statistics() -> None:
    # BN is replaced by Identity, so even a "trained" BN with odd statistics leaves the closed form unchanged.
    bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(0.01)
        bn.weight.fill_(-5.0)
        bn.bias.fill_(7.0)
    r = np.ones(4) @ np.abs(W2) @ np.abs(W1) @ np.ones(3)
    assert synflow(nn.Sequential(linear(W1), bn, linear(W2)), (3,)) == pytest.approx(2 * r, rel=1e-12)


def test_synflow_60_layer_conv_net_is_finite() -> None:
    net = nn.Sequential(ConvUnit(3, 8, 3), *[ConvUnit(8, 8, 3) for _ in range(59)])
    score = synflow(net, (3, 4, 4))
    assert math.isfinite(score) and score > 0


# ------------------------------------------------------------------------------------------------ grad_norm
def test_grad_norm_linear_closed_form() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(5, 3, bias=False).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    out = (x @ layer.weight.T).detach().numpy()
    grad = 2.0 / (4 * 3) * out.T @ x.numpy()  # ∂ mean(out²) / ∂W
    assert grad_norm(layer, x) == pytest.approx(np.linalg.norm(grad), rel=1e-12)
    # L = Σ out: ∂L/∂W has every row equal to Σ_b x_b.
    summed = grad_norm(layer, x, loss_fn=lambda o: o.sum())
    assert summed == pytest.approx(math.sqrt(3) * np.linalg.norm(x.numpy().sum(0)), rel=1e-12)


def test_mean_square_loss_flattens_nested_outputs() -> None:
    a, b = torch.full((2, 2), 2.0), torch.full((3,), 3.0)
    assert float(mean_square_loss({"x": [a, (b,)]})) == pytest.approx(4.0 + 9.0)


# ------------------------------------------------------------------------------------------------ naswot
# Identity weights: the ReLU codes are the signs of the inputs: 100, 110, 001.
CODE_INPUTS = torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


class FunctionalLeaky(nn.Module):
    """The activation is a functional call inside forward, not a module."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = linear(np.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.lin(x), 0.1)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(linear(np.eye(3)), nn.ReLU()),
        nn.Sequential(linear(np.eye(3)), nn.SiLU(inplace=True)),
        FunctionalLeaky(),
    ],
    ids=["relu-module", "silu-inplace", "functional-leaky-relu"],
)
def test_naswot_known_codes(model: nn.Module) -> None:
    # K[i, j] = 3 - Hamming(c_i, c_j): Hamming(100,110)=1, (100,001)=2, (110,001)=3.
    kernel = np.array([[3.0, 2.0, 1.0], [2.0, 3.0, 0.0], [1.0, 0.0, 3.0]])
    assert np.linalg.det(kernel) == pytest.approx(12.0)
    assert naswot(model, CODE_INPUTS) == pytest.approx(math.log(12.0), rel=1e-12)


def test_naswot_identical_codes_give_minus_inf() -> None:
    model = nn.Sequential(linear(np.eye(3)), nn.ReLU())
    assert naswot(model, CODE_INPUTS[[0, 0]]) == -math.inf


def test_naswot_needs_an_activation() -> None:
    with pytest.raises(ValueError, match="no activation"):
        naswot(linear(np.eye(3)), CODE_INPUTS)


# ------------------------------------------------------------------------------------------------ MAE-DET
def test_maedet_linear_chain_closed_form() -> None:
    # With N(0,1) weights, a Linear(n, n) multiplies the variance by n: σ_s = sqrt(n)^s. Over 20 seeds the score's
    # spread is 0.022 (weights' Frobenius-norm and sampling noise, O(1/n) and O(1/sqrt(B·n))); 0.1 is > 4 spreads.
    depth, width = 4, 128
    sigmas = [s * 0.5 * math.log(width) for s in range(1, depth + 1)]
    chain = linear_chain(depth, width)
    assert maedet_entropy(chain, (width,), batch_size=64) == pytest.approx(index_weighted(sigmas), abs=0.1)
    equal = maedet_entropy(chain, (width,), batch_size=64, weights=None)
    assert equal == pytest.approx(sum(sigmas) / depth, abs=0.1)


def test_maedet_deeper_and_wider_score_higher() -> None:
    def score(depth: int, width: int) -> float:
        return maedet_entropy(linear_chain(depth, width), (width,), batch_size=16, weights=None)

    assert score(6, 32) > score(3, 32)
    assert score(3, 128) > score(3, 32)


def test_maedet_60_layers_finite_and_on_the_closed_form() -> None:
    # Six stages of ten 1×1 convs (width 32): stage s has log σ = 10·s·½·ln 32, 104 nats at the end. Over 10 seeds
    # the score (75.1) spreads by 0.49; a 3 % tolerance is > 4 spreads.
    stages = nn.Sequential(*[nn.Sequential(*[nn.Conv2d(32, 32, 1, bias=False) for _ in range(10)]) for _ in range(6)])
    expected = index_weighted([10 * s * 0.5 * math.log(32) for s in range(1, 7)])
    score = maedet_entropy(stages, (32, 4, 4), batch_size=8)
    assert math.isfinite(score)
    assert score == pytest.approx(expected, rel=0.03)
    units = nn.Sequential(ConvUnit(3, 8, 3), *[ConvUnit(8, 8, 3) for _ in range(59)])
    assert math.isfinite(maedet_entropy(units, (3, 4, 4)))


def test_maedet_stage_options_are_checked() -> None:
    chain = linear_chain(3, 8)
    with pytest.raises(ValueError, match="one after another"):
        maedet_entropy(chain, (8,), stages=["0", "2"])
    with pytest.raises(ValueError, match="no submodule 'head'"):
        maedet_entropy(chain, (8,), stages=["head"])
    with pytest.raises(ValueError, match="3 numbers"):
        maedet_entropy(chain, (8,), weights=[1.0, 2.0])
    explicit = maedet_entropy(chain, (8,), stages=["0", "1", "2"], weights=[0.0, 0.0, 1.0], batch_size=32)
    assert explicit == pytest.approx(maedet_entropy(chain, (8,), weights=[0.0, 0.0, 1.0], batch_size=32))


# ------------------------------------------------------------------------------------------------ contract
def small_net() -> nn.Sequential:
    net = nn.Sequential(ConvUnit(3, 8, 3), ConvUnit(8, 8, 3, 2), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        for bn in (net[0].bn, net[1].bn):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    net[0].eval()
    net[1].conv.weight.requires_grad_(False)
    net[2].weight.grad = torch.ones_like(net[2].weight)
    return net


@pytest.mark.parametrize(
    "proxy",
    [
        lambda m, x: synflow(m, (3, 8, 8)),
        lambda m, x: grad_norm(m, x),
        lambda m, x: naswot(m, x),
        lambda m, x: maedet_entropy(m, (3, 8, 8)),
        lambda m, x: zero_cost_scores(m, x),
    ],
    ids=["synflow", "grad_norm", "naswot", "maedet_entropy", "all"],
)
def test_proxies_leave_the_model_unchanged(proxy) -> None:  # type: ignore[no-untyped-def]
    net = small_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    flags = [p.requires_grad for p in net.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    proxy(net, torch.randn(3, 3, 8, 8))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(
        (g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, net.parameters(), strict=True)
    )


def test_clear_errors() -> None:
    net = small_net()
    with pytest.raises(ValueError, match="no Conv or Linear"):
        synflow(nn.Sequential(nn.ReLU()), (3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(1, 4, 8, 8\)"):
        synflow(net, (4, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(2, 4, 8, 8\)"):
        grad_norm(net, torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="batch of at least 2"):
        naswot(net, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="float tensor"):
        grad_norm(net, torch.ones(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="did you mean 'zc_naswot'"):
        zero_cost_scores(net, torch.randn(2, 3, 8, 8), names=["naswot"])


# ------------------------------------------------------------------------------------------------ detector
@pytest.fixture(scope="module")
def nano() -> nn.Module:
    torch.manual_seed(0)
    return build_detector(get_preset("yolor-elan-nano"))


def test_nano_detector_scores_are_finite(nano: nn.Module) -> None:
    scores = zero_cost_scores(nano, torch.randn(2, 3, 64, 64))
    assert list(scores) == [*ZERO_COST_NAMES, "zc_seconds"]
    assert all(math.isfinite(v) for v in scores.values()), scores
    assert scores["zc_seconds"] < 20
    assert scores["zc_synflow"] == pytest.approx(math.log10(synflow(nano, (3, 64, 64))))
    with pytest.raises(ValueError, match="largest stride 32"):
        synflow(nano, (3, 70, 70))
