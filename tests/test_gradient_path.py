"""Gradient-path metrics pinned against every worked example of ARCH_SPEC §7.3 (toy width C = 4)."""

from __future__ import annotations

import itertools
import json
import math
import time

import pytest
import torch
from torch import nn

from gpnas.objectives.gradient_path import (
    GraphError,
    analyze,
    gradient_aggregates,
    measure_gradients,
)
from gpnas.search_space.modules.common import ConvUnit, ImplicitA, ImplicitM, MaskedAdd

C = 4
SHAPE = (1, 3, 8, 8)


def conv1(cin: int = C, cout: int = C) -> ConvUnit:
    return ConvUnit(cin, cout, 1)


def conv3(cin: int = C, cout: int = C) -> ConvUnit:
    return ConvUnit(cin, cout, 3)


class Toy(nn.Module):
    """Stem P (3 -> C, 3×3) and head H (plain 1×1 Conv2d whose output is the model output)."""

    def __init__(self, head_in: int = C) -> None:
        super().__init__()
        self.P = conv3(3, C)
        self.H = nn.Conv2d(head_in, 6, 1)


def run(model: nn.Module, **kwargs: object):
    torch.manual_seed(0)
    return analyze(model, input_shape=SHAPE, **kwargs)


def sgp_lgp(report, name: str) -> tuple[int | None, int | None]:
    m = report.layer(name)
    return m.sgp, m.lgp


def classes(report, name: str) -> list[tuple[str, set[tuple[int, str]], int]]:
    return [(c.channels, set(c.comb), c.npath) for c in report.layer(name).classes]


# ---------------------------------------------------------------------------------------------------------
# (a) PlainNet


class PlainNet(Toy):
    def __init__(self) -> None:
        super().__init__()
        self.a1, self.b1, self.a2, self.b2 = conv1(), conv3(), conv1(), conv3()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.H(self.b2(self.a2(self.b1(self.a1(self.P(x))))))


def test_plainnet() -> None:
    report = run(PlainNet())
    for name, t in {"H": 1, "b2": 2, "a2": 3, "b1": 4, "a1": 5, "P": 6}.items():
        m = report.layer(name)
        assert (m.sgp, m.lgp, m.ts, m.npath, m.npath_hist) == (t, t, (t,), 1, {t: 1})
        assert m.agg == (0 if name == "P" else 1)
    assert [m.name for m in report.layers] == ["P", "a1", "b1", "a2", "b2", "H"]
    assert report.layer("H").srcs == ("LOSS",) and report.layer("H").is_head


# ---------------------------------------------------------------------------------------------------------
# (b) ResNet and (c) PRN: x_{i+1} = x_i + b_i(a_i(x_i)), or the masked add with r = 0.5


class ResNet(Toy):
    def __init__(self, n: int = 2, mask_ratio: float | None = None, detach: str = "") -> None:
        super().__init__()
        self.n, self.detach = n, detach
        for i in range(1, n + 1):
            setattr(self, f"a{i}", conv1())
            setattr(self, f"b{i}", conv3())
            if mask_ratio is not None:
                setattr(self, f"m{i}", MaskedAdd(C, C, mask_ratio))
        self.masked = mask_ratio is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.P(x)
        for i in range(1, self.n + 1):
            fx = getattr(self, f"b{i}")(getattr(self, f"a{i}")(x.detach() if self.detach == "block" else x))
            identity = x.detach() if self.detach == "identity" else x
            x = getattr(self, f"m{i}")(fx, identity) if self.masked else identity + fx
        return self.H(x)


RESNET2 = {  # layer: (SGP, LGP, TS, SRC, n_comb, NPATH histogram, DUP, AGG)
    "H": (1, 1, (1,), ("LOSS",), 1, {1: 1}, 0.0, 3),
    "b2": (2, 2, (2,), ("H",), 1, {2: 1}, 2.0, 1),
    "a2": (3, 3, (3,), ("b2",), 1, {3: 1}, 0.0, 2),
    "b1": (2, 4, (2, 4), ("H", "a2"), 2, {2: 1, 4: 1}, 1.5, 1),
    "a1": (3, 5, (3, 5), ("b1",), 2, {3: 1, 5: 1}, 0.0, 1),
    "P": (2, 6, (2, 4, 6), ("H", "a1", "a2"), 4, {2: 1, 4: 2, 6: 1}, 1.0, 0),
}


def _row(m) -> tuple[object, ...]:
    return (m.sgp, m.lgp, m.ts, tuple(sorted(m.srcs)), m.n_comb, m.npath_hist, m.dup, m.agg)


def test_resnet_two_blocks_every_column() -> None:
    report = run(ResNet(2))
    for name, (sgp, lgp, ts, src, n_comb, hist, dup, agg) in RESNET2.items():
        m = report.layer(name)
        assert _row(m) == (sgp, lgp, ts, tuple(sorted(src)), n_comb, hist, dup, agg), name
        assert m.npath == sum(hist.values()) and m.n_cls == 1
    assert set(report.layer("P").comb) == {(2, "H"), (4, "a1"), (4, "a2"), (6, "a1")}


def test_resnet_three_blocks_and_growth() -> None:
    p = run(ResNet(3)).layer("P")
    assert (p.ts, p.n_comb, p.npath, p.npath_hist) == ((2, 4, 6, 8), 7, 8, {2: 1, 4: 3, 6: 3, 8: 1})
    p6 = run(ResNet(6)).layer("P")
    assert (p6.sgp, p6.lgp, p6.npath) == (2, 14, 2**6)
    assert p6.npath_hist == {2 + 2 * k: math.comb(6, k) for k in range(7)}


def test_prn_channel_classes_and_duplication() -> None:
    report = run(ResNet(2, mask_ratio=0.5))
    for name, row in RESNET2.items():  # layer-level numbers equal ResNet's, except DUP
        m = report.layer(name)
        assert _row(m)[:6] == _row(run(ResNet(2)).layer(name))[:6] == (
            row[0], row[1], row[2], tuple(sorted(row[3])), row[4], row[5],
        )  # fmt: skip
    assert classes(report, "P") == [
        ("0-1", {(2, "H"), (4, "a1"), (4, "a2"), (6, "a1")}, 4),
        ("2-3", {(4, "a1"), (6, "a1")}, 2),
    ]
    assert [c.sgp for c in report.layer("P").classes] == [2, 4]
    assert classes(report, "b1") == [("0-1", {(2, "H"), (4, "a2")}, 2), ("2-3", {(4, "a2")}, 1)]
    assert report.layer("b1").classes[1].sgp == 4
    assert {n: report.layer(n).n_cls for n in ("P", "b1", "b2", "a1", "a2", "H")} == {
        "P": 2, "b1": 2, "b2": 1, "a1": 1, "a2": 1, "H": 1,
    }  # fmt: skip
    assert {n: report.layer(n).dup for n in ("b2", "b1", "P")} == {"b2": 1.0, "b1": 1.0, "P": 0.75}
    assert run(ResNet(2)).aggregates["gp_n_cls_total"] == 6
    assert report.aggregates["gp_n_cls_total"] == 8


# ---------------------------------------------------------------------------------------------------------
# (d) CSP stage with conv split, (e) with channel split


class CSP(Toy):
    def __init__(self, transition: bool, fuse: bool, split: str = "conv") -> None:
        super().__init__()
        h = C // 2
        self.split = split
        if split == "conv":
            self.cv1, self.cv2 = conv1(C, h), conv1(C, h)
        self.a1, self.b1, self.a2, self.b2 = conv1(h, h), conv3(h, h), conv1(h, h), conv3(h, h)
        self.cv3 = conv1(h, h) if transition else nn.Identity()
        self.cv4 = conv1(C, C) if fuse else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.P(x)
        if self.split == "conv":
            x, cross = self.cv1(p), self.cv2(p)
        elif self.split == "chunk":
            x, cross = p.chunk(2, dim=1)
        else:
            x, cross = p[:, : C // 2], p[:, C // 2 :]
        x = x + self.b1(self.a1(x))
        x = x + self.b2(self.a2(x))
        return self.H(self.cv4(torch.cat([self.cv3(x), cross], dim=1)))


CSP_VARIANTS = {  # (cv3, cv4) -> {layer: (SGP, LGP)}, P: (TS, NPATH histogram)
    "fusion": ((True, True), {"cv4": (2, 2), "cv3": (3, 3), "cv2": (3, 3), "b2": (4, 4), "a2": (5, 5),
                              "b1": (4, 6), "a1": (5, 7), "cv1": (4, 8)},
               ((4, 5, 7, 9), {4: 1, 5: 1, 7: 2, 9: 1})),
    "first": ((False, True), {"cv4": (2, 2), "cv2": (3, 3), "b2": (3, 3), "a2": (4, 4), "b1": (3, 5),
                              "a1": (4, 6), "cv1": (3, 7)},
              ((4, 6, 8), {4: 2, 6: 2, 8: 1})),
    "last": ((True, False), {"cv3": (2, 2), "cv2": (2, 2), "b2": (3, 3), "a2": (4, 4), "b1": (3, 5),
                             "a1": (4, 6), "cv1": (3, 7)},
             ((3, 4, 6, 8), {3: 1, 4: 1, 6: 2, 8: 1})),
    "none": ((False, False), {"cv2": (2, 2), "b2": (2, 2), "a2": (3, 3), "b1": (2, 4), "a1": (3, 5),
                              "cv1": (2, 6)},
             ((3, 5, 7), {3: 2, 5: 2, 7: 1})),
}  # fmt: skip


@pytest.mark.parametrize("variant", CSP_VARIANTS)
def test_csp_conv_split_fusion_placements(variant: str) -> None:
    (cv3, cv4), table, (p_ts, p_hist) = CSP_VARIANTS[variant]
    report = run(CSP(cv3, cv4))
    assert {m.name for m in report.layers} == {*table, "P", "H"}
    assert {name: sgp_lgp(report, name) for name in table} == table
    p = report.layer("P")
    assert (p.ts, p.npath, p.npath_hist, p.n_cls, p.srcs) == (p_ts, 5, p_hist, 1, ("cv1", "cv2"))
    if variant == "fusion":
        assert report.layer("cv1").ts == (4, 6, 8)
    dup = {n: report.layer(n).dup for n in ("b2", "b1", "cv1", "cv2", "P")}
    assert dup == {"b2": 2.0, "b1": 1.5, "cv1": 1.0, "cv2": 0.0, "P": 0.0}


@pytest.mark.parametrize("split", ["slice", "chunk"])
def test_csp_channel_split(split: str) -> None:
    report = run(CSP(True, True, split=split))
    p = report.layer("P")
    assert classes(report, "P") == [
        ("0-1", {(4, "cv3"), (6, "a1"), (6, "a2"), (8, "a1")}, 4),
        ("2-3", {(3, "cv4")}, 1),
    ]
    assert (p.sgp, p.lgp, p.n_comb, p.srcs, p.n_cls, p.npath) == (3, 8, 5, ("a1", "a2", "cv3", "cv4"), 2, 5)


# ---------------------------------------------------------------------------------------------------------
# (f, g) ELAN, (h) VoVNet, (i) DenseNet


class ELAN(Toy):
    def __init__(self, n_blk: int, depth: int) -> None:
        super().__init__()
        w = C // 2
        self.depth, self.n = depth, n_blk * depth
        self.A, self.B = conv1(C, w), conv1(C, w)
        for i in range(1, self.n + 1):
            setattr(self, f"c{i}", conv3(w, w))
        self.T = conv1(w * (2 + n_blk), C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.P(x)
        a, y = self.A(p), self.B(p)
        taps = [y, a]
        for i in range(1, self.n + 1):
            y = getattr(self, f"c{i}")(y)
            if i % self.depth == 0:
                taps.insert(0, y)
        return self.H(self.T(torch.cat(taps, dim=1)))


def test_elan_2x2() -> None:
    report = run(ELAN(2, 2))
    expected = {
        "H": (1, 1, (1,), 1), "T": (2, 2, (2,), 1), "A": (3, 3, (3,), 1), "c4": (3, 3, (3,), 1),
        "c3": (4, 4, (4,), 1), "c2": (3, 5, (3, 5), 2), "c1": (4, 6, (4, 6), 2), "B": (3, 7, (3, 5, 7), 3),
        "P": (4, 8, (4, 6, 8), 4),
    }  # fmt: skip
    assert {n: (m.sgp, m.lgp, m.ts, m.npath) for n in expected for m in [report.layer(n)]} == expected
    assert report.layer("P").npath_hist == {4: 2, 6: 1, 8: 1}
    assert report.layer("B").srcs == ("T", "c1") and report.layer("P").srcs == ("A", "B")
    assert all(m.dup == 0.0 for m in report.layers)
    deeper = run(ELAN(3, 2))
    assert max(deeper.layer(f"c{i}").sgp for i in range(1, 7)) == 4
    assert (deeper.layer("P").lgp, deeper.layer("P").ts) == (10, (4, 6, 8, 10))


def test_elan_4x1() -> None:
    report = run(ELAN(4, 1))
    assert all(report.layer(f"c{i}").sgp == 3 for i in range(1, 5))
    lgp = {n: report.layer(n).lgp for n in ("c4", "c3", "c2", "c1", "B", "P")}
    assert lgp == {"c4": 3, "c3": 4, "c2": 5, "c1": 6, "B": 7, "P": 8}
    p = report.layer("P")
    assert report.layer("B").ts == (3, 4, 5, 6, 7) and p.ts == (4, 5, 6, 7, 8)
    assert (p.n_comb, p.npath, p.npath_hist) == (6, 6, {4: 2, 5: 1, 6: 1, 7: 1, 8: 1})


class VoVNet(Toy):
    """Two OSA modules: x -> ca -> cb, concat [x, ca, cb] -> own 1×1 transition."""

    def __init__(self) -> None:
        super().__init__()
        for m in (1, 2):
            setattr(self, f"c{m}a", conv3())
            setattr(self, f"c{m}b", conv3())
            setattr(self, f"T{m}", conv1(3 * C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.P(x)
        for m in (1, 2):
            a = getattr(self, f"c{m}a")(x)
            b = getattr(self, f"c{m}b")(a)
            x = getattr(self, f"T{m}")(torch.cat([x, a, b], dim=1))
        return self.H(x)


def test_vovnet() -> None:
    report = run(VoVNet())
    sgp = {n: report.layer(n).sgp for n in ("c2a", "c2b", "T1", "c1a", "c1b", "P")}
    assert sgp == {"c2a": 3, "c2b": 3, "T1": 3, "c1a": 4, "c1b": 4, "P": 4}
    assert (report.layer("P").lgp, report.layer("P").npath) == (8, 9)


class DenseNet(Toy):
    def __init__(self) -> None:
        super().__init__()
        g = 2
        self.d1, self.d2, self.d3 = conv3(C, g), conv3(C + g, g), conv3(C + 2 * g, g)
        self.T = conv1(C + 3 * g, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.P(x)
        for d in (self.d1, self.d2, self.d3):
            x = torch.cat([x, d(x)], dim=1)
        return self.H(self.T(x))


def test_densenet() -> None:
    report = run(DenseNet())
    assert all(report.layer(n).sgp == 3 for n in ("d1", "d2", "d3", "P"))
    assert {n: report.layer(n).n_comb for n in ("P", "d1", "d2", "d3")} == {"P": 7, "d1": 4, "d2": 2, "d3": 1}
    assert all(m.dup == 0.0 for m in report.layers)
    assert {n: report.layer(n).agg for n in ("d1", "d2", "d3", "T")} == {"d1": 1, "d2": 2, "d3": 3, "T": 4}


# ---------------------------------------------------------------------------------------------------------
# conventions and op coverage


def test_stop_gradient_paper_fig9() -> None:
    plain = run(ResNet(2, detach="identity"))
    assert {n: sgp_lgp(plain, n) for n in ("H", "b2", "a2", "b1", "a1", "P")} == {
        "H": (1, 1), "b2": (2, 2), "a2": (3, 3), "b1": (4, 4), "a1": (5, 5), "P": (6, 6),
    }  # fmt: skip
    assert plain.layer("H").agg == 3  # forward edges survive detach
    blocks = run(ResNet(2, detach="block"))
    assert {n: sgp_lgp(blocks, n) for n in ("b2", "a2", "b1", "a1", "P")} == {
        "b2": (2, 2), "a2": (3, 3), "b1": (2, 2), "a1": (3, 3), "P": (2, 2),
    }  # fmt: skip


def test_count_head_false_subtracts_one() -> None:
    report = run(ResNet(2), count_head=False)
    p, h = report.layer("P"), report.layer("H")
    assert (h.sgp, h.comb) == (0, frozenset({(0, "LOSS")}))
    assert (p.sgp, p.lgp, p.ts, p.npath_hist) == (1, 5, (1, 3, 5), {1: 1, 3: 2, 5: 1})
    assert report.aggregates["gp_max_lgp"] == 5 and not report.count_head


class Grouped(Toy):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.g = ConvUnit(C, C, 1, groups=groups)
        self.c = conv3(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.g(self.P(x))
        return self.H(torch.cat([y[:, :2], self.c(y[:, 2:])], dim=1))


def test_grouped_conv_keeps_gradient_within_group() -> None:
    grouped = run(Grouped(2))
    assert classes(grouped, "g") == [("0-1", {(2, "H")}, 1), ("2-3", {(3, "c")}, 1)]
    assert classes(grouped, "P") == [("0-1", {(3, "g")}, 2), ("2-3", {(4, "g")}, 2)]
    assert grouped.layer("g").kind == "ConvUnit 1x1/1 g2"
    dense = run(Grouped(1))
    assert classes(dense, "P") == [("0-3", {(3, "g"), (4, "g")}, 2)]


class Detectish(nn.Module):
    """Detect-head plumbing: ImplicitA -> 1×1 conv -> ImplicitM -> view/permute, two levels, upsample + cat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvUnit(3, 8, 3, 2)
        self.down = ConvUnit(8, 8, 3, 2)
        self.up = nn.Upsample(scale_factor=2.0)
        self.ia = nn.ModuleList([ImplicitA(16), ImplicitA(8)])
        self.m = nn.ModuleList([nn.Conv2d(16, 3 * 7, 1), nn.Conv2d(8, 3 * 7, 1)])
        self.im = nn.ModuleList([ImplicitM(21), ImplicitM(21)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.stem(x)
        p4 = self.down(p3)
        feats = [torch.cat([p3, self.up(p4)], 1), nn.functional.max_pool2d(p4, 3, 1, 1)]
        out = []
        for i, f in enumerate(feats):
            y = self.im[i](self.m[i](self.ia[i](f)))
            bs, _, ny, nx = y.shape
            out.append(y.view(bs, 3, 7, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out


def test_detect_head_plumbing_and_table_is_json() -> None:
    report = analyze(Detectish(), input_shape=(1, 3, 32, 32))
    assert [m.name for m in report.layers if m.is_head] == ["m.0", "m.1"]
    assert report.layer("down").srcs == ("m.0", "m.1") and report.layer("down").agg == 1
    assert report.layer("stem").ts == (2, 3) and report.layer("m.0").agg == 2
    rows = json.loads(json.dumps(report.table()))
    assert rows[0]["name"] == "stem" and rows[0]["npath_hist"] == {"2": 1, "3": 2}
    assert set(report.aggregates) == {
        "gp_max_lgp", "gp_max_sgp", "gp_mean_sgp", "gp_median_sgp", "gp_n_comb_total", "gp_n_cls_total",
        "gp_mean_dup", "gp_n_layers", "gp_n_heads", "gp_n_unreached", "gp_log10_npath_max",
    }  # fmt: skip
    assert all(isinstance(v, float) and math.isfinite(v) for v in report.aggregates.values())


class Odd(Toy):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.P(x)
        if self.op == "roll":
            p = torch.roll(p, 1, 1)
        elif self.op == "gate":
            p = p * torch.sigmoid(nn.functional.adaptive_avg_pool2d(p, 1))
        elif self.op == "cat2":
            p = torch.cat([p, p], dim=2)[:, :, :8]
        elif self.op == "view":
            p = self.P2(p.view(1, 2, 2, 8, 8).permute(0, 2, 1, 3, 4).reshape(1, 4, 8, 8))
        return self.H(p)


@pytest.mark.parametrize(
    ("op", "match"),
    [("roll", "roll"), ("gate", "broadcasting"), ("cat2", "dim 1"), ("view", "view/permute/reshape")],
)
def test_unknown_or_unsupported_op_raises(op: str, match: str) -> None:
    model = Odd(op)
    model.P2 = conv1()
    with pytest.raises(GraphError, match=match) as err:
        run(model)
    assert isinstance(err.value, ValueError)


def test_untraceable_forward_raises() -> None:
    class Branchy(Toy):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.P(x)
            return self.H(p if p.sum() > 0 else -p)

    with pytest.raises(GraphError, match="control flow"):
        run(Branchy())


def test_analyze_leaves_model_state_alone() -> None:
    model = ResNet(2)
    model.a1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model)
    assert model.training and not model.a1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------
# measured statistics


def test_measure_gradients_on_prn() -> None:
    torch.manual_seed(0)
    model = ResNet(2, mask_ratio=0.5)
    report = run(model)
    measured = measure_gradients(model, torch.randn(2, 3, 16, 16), report=report)
    assert set(measured) == {m.name for m in report.layers}
    for row in measured.values():
        assert math.isfinite(row["weight_grad_norm"]) and row["weight_grad_norm"] > 0
        assert math.isfinite(row["output_grad_norm"]) and row["output_grad_norm"] > 0
    assert {n for n, row in measured.items() if "class_cos" in row} == {"P", "b1"}
    assert all(-1.0 <= measured[n]["class_cos"] <= 1.0 for n in ("P", "b1"))
    agg = gradient_aggregates(measured)
    assert set(agg) == {"gp_grad_norm_mean", "gp_grad_norm_cv", "gp_class_cos_mean"}
    assert all(math.isfinite(v) for v in agg.values())
    assert all(p.grad is None for p in model.parameters())
    plain = measure_gradients(PlainNet(), torch.randn(1, 3, 8, 8))
    assert "gp_class_cos_mean" not in gradient_aggregates(plain)


# ---------------------------------------------------------------------------------------------------------
# speed guard on a paper-scale synthetic network


class Synthetic(nn.Module):
    """~150 ConvUnits, widths 32..1024: CSP stages with residual blocks, ELANs, an FPN-ish top-down path."""

    def __init__(self) -> None:
        super().__init__()
        widths = (32, 64, 128, 256, 512, 1024)
        self.stem = ConvUnit(3, widths[0], 3)
        self.stages = nn.ModuleList()
        for cin, cout in itertools.pairwise(widths):
            h = cout // 2
            self.stages.append(
                nn.ModuleDict(
                    {
                        "down": ConvUnit(cin, cout, 3 if cout <= 256 else 1, 2),
                        "cv1": ConvUnit(cout, h),
                        "cv2": ConvUnit(cout, h),
                        "blocks": nn.ModuleList(
                            [nn.ModuleList([ConvUnit(h, h), ConvUnit(h, h, 3 if h <= 128 else 1)]) for _ in range(8)]
                        ),
                        "masks": nn.ModuleList([MaskedAdd(h, h, 0.5) for _ in range(8)]),
                        "cv3": ConvUnit(h, h),
                        "cv4": ConvUnit(cout, cout),
                        "elan": nn.ModuleList([ConvUnit(cout, h), ConvUnit(cout, h)]
                                              + [ConvUnit(h, h) for _ in range(4)]),
                        "elan_t": ConvUnit(4 * h, cout),
                    }
                )
            )  # fmt: skip
        self.heads = nn.ModuleList([nn.Conv2d(w, 255, 1) for w in widths[-3:]])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for s in self.stages:
            x = s["down"](x)
            y, cross = s["cv1"](x), s["cv2"](x)
            for (a, b), m in zip(s["blocks"], s["masks"], strict=True):
                y = m(b(a(y)), y)
            x = s["cv4"](torch.cat([s["cv3"](y), cross], 1))
            e = s["elan"]
            a0, b0 = e[0](x), e[1](x)
            c2 = e[3](e[2](b0))
            c4 = e[5](e[4](c2))
            x = x + s["elan_t"](torch.cat([c4, c2, b0, a0], 1))
            feats.append(x)
        return [h(f) for h, f in zip(self.heads, feats[-3:], strict=True)]


def test_speed_on_paper_scale_network() -> None:
    model = Synthetic()
    run(PlainNet())  # pay one-off imports (ShapeProp pulls in sympy) outside the timed call
    start = time.perf_counter()
    report = analyze(model, input_shape=(1, 3, 64, 64))
    total = time.perf_counter() - start
    n = len(report.layers)
    assert 140 <= n <= 200
    assert report.analysis_seconds < 1.0 and total < 2.0, (report.analysis_seconds, total)
    assert report.aggregates["gp_n_heads"] == 3 and report.aggregates["gp_n_unreached"] == 0
    assert report.aggregates["gp_max_lgp"] > report.aggregates["gp_max_sgp"]


def test_builder_presets_are_analysable() -> None:
    builder = pytest.importorskip("gpnas.search_space.builder")
    presets = pytest.importorskip("gpnas.search_space.presets")
    reports = {
        name: analyze(builder.build_detector(presets.get_preset(name)), input_shape=(1, 3, 64, 64))
        for name in ("yolor-v3-nano", "yolor-prn-nano", "yolor-elan-nano")
    }
    for report in reports.values():
        assert report.aggregates["gp_n_heads"] == 3 and report.aggregates["gp_n_unreached"] == 0
    agg = {name: r.aggregates for name, r in reports.items()}
    assert agg["yolor-prn-nano"]["gp_n_cls_total"] > agg["yolor-v3-nano"]["gp_n_cls_total"]
    assert agg["yolor-prn-nano"]["gp_mean_dup"] < agg["yolor-v3-nano"]["gp_mean_dup"]
    assert agg["yolor-elan-nano"]["gp_mean_dup"] == 0.0
