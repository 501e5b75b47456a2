"""Deployable graphs of an architecture: the fused model (BN folded into the convs, YOLOR's implicit layers folded
into the detect convs) exported to ONNX or TorchScript, and checked by running the export.

The graph takes ``images: Tensor[B, 3, S, S]`` float32 in [0, 1] and returns the raw level maps
``p3, p4, p5: Tensor[B, na, S/s, S/s, 5 + nc]`` (+ ``proto`` for the seg head), or with ``decode`` one
``detections: Tensor[B, N, 5 + nc]`` of (cx, cy, w, h in input pixels, objectness, class probabilities). NMS stays
outside the graph (the runtime's own, or :func:`gpnas.trainers.postprocess.non_max_suppression`): an NMS op
would tie the graph to one runtime's operator set. Batch and size are fixed or dynamic, as asked.

Every export is verified before it is reported: the runtime (onnxruntime, or ``torch.jit.load``) runs the file
on a fixed seeded input and its raw outputs must match the fused torch model to ``ATOL`` (fp32); then both score
100 digits val images through the same decode + NMS + pycocotools, and the APs must agree to 3 decimals (for a
model of the 10 digit classes; another dataset's model gets the raw check only). A
failed check raises :class:`ExportCheckFailed` naming the output and the difference; the file is removed.

An ONNX file carries its architecture: the spec YAML (``gpnas.spec``), its ``gpnas.arch_id`` and whether the graph
decodes (``gpnas.decode``) are written into the model's ``metadata_props``, so the file alone rebuilds the torch
model it was exported from (`gpnas latency FILE.onnx --mode both` predicts it from the per-layer table).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpnas.errors import ConfigError, GpnasError
from gpnas.search_space.spec import ArchSpec

__all__ = ["ARCH_ID_KEY", "ATOL", "DECODE_KEY", "DEFAULT_OPSET", "FORMATS", "SPEC_KEY", "DeployModel", "DeployOptions",
           "ExportCheckFailed", "compare_latency", "export_model", "verify_export"]

FORMATS = ("spec", "onnx", "torchscript")
ATOL = 1e-4
#: digits val images the AP check scores (a set of its own, built once into the cache in a few seconds)
VAL_IMAGES = 100
DEFAULT_OPSET = 18
STRIDE = 32
#: the ONNX metadata_props keys an export writes: the spec YAML, its arch_id, and "true"/"false" for decode
SPEC_KEY, ARCH_ID_KEY, DECODE_KEY = "gpnas.spec", "gpnas.arch_id", "gpnas.decode"


class ExportCheckFailed(GpnasError):
    """An exported file does not compute what the torch model computes."""


@dataclass(frozen=True)
class DeployOptions:
    """``img``: the input size (default: the spec's); ``batch``: a fixed batch (None: dynamic); ``dynamic_size``:
    any S (a multiple of 32) instead of ``img`` only; ``decode``: boxes in the graph; ``opset``: ONNX opset;
    ``latency``: also time each graph's runtime against the torch model (:func:`compare_latency`)."""

    img: int | None = None
    batch: int | None = 1
    dynamic_size: bool = False
    decode: bool = False
    opset: int = DEFAULT_OPSET
    latency: bool = False

    def size(self, spec: ArchSpec) -> int:
        size = self.img or spec.img_size
        if size < STRIDE or size % STRIDE:
            raise ConfigError(f"--img {size}: the input size must be a positive multiple of {STRIDE} (the "
                              f"detector's largest stride); e.g. {max(STRIDE, round(size / STRIDE) * STRIDE)}")
        return size


class DeployModel(nn.Module):
    """The fused detector as deployed: raw level maps, or decoded detections (see the module docstring)."""

    def __init__(self, detector: nn.Module, *, decode: bool = False) -> None:
        super().__init__()
        self.detector = copy.deepcopy(detector).eval()
        self.detector.fuse()  # type: ignore[operator]
        self.decode = decode

    def forward(self, images: torch.Tensor) -> Any:
        out = self.detector(images)
        if self.decode:
            return self.decoded(out[:3])
        return tuple(out)

    def decoded(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The detector's ``decode`` (the same operations, the same values), written so that a traced graph keeps
        the grid's size symbolic: the cell indices come from cumulative sums over the map, not from Python ints
        of its shape (which the tracer would freeze at the example's size)."""
        det = self.detector
        rows = []
        for i, stride in enumerate(det.strides):  # type: ignore[arg-type]
            p = outputs[i][..., : 5 + det.num_classes].float().sigmoid()  # type: ignore[operator]
            ones = torch.ones_like(p[..., 0])
            grid = torch.stack((ones.cumsum(-1) - 1, ones.cumsum(-2) - 1), dim=-1)
            xy = (p[..., :2] * 2 - 0.5 + grid) * stride
            wh = (p[..., 2:4] * 2) ** 2 * det.anchors[i].view(1, -1, 1, 1, 2)  # type: ignore[index]
            rows.append(torch.cat([xy, wh, p[..., 4:]], dim=-1).reshape(p.shape[0], -1, p.shape[-1]))
        return torch.cat(rows, dim=1)

    def output_names(self) -> list[str]:
        if self.decode:
            return ["detections"]
        names = ["p3", "p4", "p5"]
        return [*names, "proto"] if getattr(self.detector, "proto", None) is not None else names


def _example(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _export_onnx(model: DeployModel, path: Path, example: torch.Tensor, opts: DeployOptions) -> None:
    """A fixed input size goes through torch's tracing exporter (a second or two; the batch axis may be dynamic);
    a dynamic size through torch.export (``dynamo=True``: ~20 s, and it needs onnxscript), because tracing
    freezes the sizes the network computes from its input's shape (upsampling, the decode grid)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so clearly)
    except ImportError:
        raise GpnasError("ONNX export needs onnx and onnxruntime: `pip install 'gradpath-nas[deploy]'` "
                         "(make setup installs them)") from None
    names = {"input_names": ["images"], "output_names": model.output_names(), "opset_version": opts.opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' notes on tracing; a failed check is what matters
        if opts.dynamic_size:  # symbolic H, W through the whole network: torch.export's exporter
            dims = {0: torch.export.Dim("batch", min=1, max=1024)} if opts.batch is None else {}
            dims.update({2: STRIDE * torch.export.Dim("h", min=1, max=64),
                         3: STRIDE * torch.export.Dim("w", min=1, max=64)})
            torch.onnx.export(model, (example,), str(path), dynamic_shapes={"images": dims}, dynamo=True,
                              verbose=False, **names)
            return
        # fixed size: the tracing exporter, ten times faster, with the batch axis dynamic when asked
        dynamic = {"images": {0: "batch"}, **{n: {0: "batch"} for n in model.output_names()}} \
            if opts.batch is None else None
        torch.onnx.export(model, (example,), str(path), dynamic_axes=dynamic, dynamo=False, **names)


def _stamp_onnx(path: Path, spec: ArchSpec, opts: DeployOptions) -> list[str]:
    """Write the architecture into the file's ``metadata_props`` (kept: what the exporter wrote); -> the keys."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({SPEC_KEY: spec.to_yaml(), ARCH_ID_KEY: spec.arch_id, DECODE_KEY: str(opts.decode).lower()})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return [SPEC_KEY, ARCH_ID_KEY, DECODE_KEY]


def _export_torchscript(model: DeployModel, path: Path, example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notes
        traced = torch.jit.trace(model, (example,), check_trace=False)
        traced.save(str(path))


def export_model(spec: ArchSpec, model: nn.Module, fmt: str, out: Path, opts: DeployOptions) -> dict[str, Any]:
    """Write ``model`` (a built, possibly trained detector of ``spec``) as ``fmt`` into ``out``, verify it, and
    return its manifest entry (file, format, opset, input/output names and shapes, the check's figures)."""
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    size = opts.size(spec)
    deploy = DeployModel(model, decode=opts.decode)
    example = _example(opts.batch or 1, size)
    path = out / f"{spec.arch_id}.{'onnx' if fmt == 'onnx' else 'torchscript.pt'}"
    metadata: list[str] = []
    with torch.no_grad():
        if fmt == "onnx":
            _export_onnx(deploy, path, example, opts)
            metadata = _stamp_onnx(path, spec, opts)
        else:
            _export_torchscript(deploy, path, example)
        outputs = [tuple(o.shape) for o in _as_list(deploy(example))]
    try:
        check = verify_export(path, fmt, deploy, size, opts)
    except ExportCheckFailed:
        path.unlink(missing_ok=True)
        raise
    dims = ["batch" if opts.batch is None else opts.batch, 3, *(["height", "width"] if opts.dynamic_size
                                                               else [size, size])]
    return {"format": fmt, "file": path.name, "opset": opts.opset if fmt == "onnx" else None,
            "inputs": [{"name": "images", "shape": dims, "dtype": "float32", "range": [0, 1]}],
            "outputs": [{"name": n, "shape": list(s)} for n, s in zip(deploy.output_names(), outputs, strict=True)],
            "fused": True, "decode_in_graph": opts.decode, "nms_in_graph": False, "check": check,
            **({"metadata_props": metadata} if metadata else {})}


def _as_list(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _runtime(path: Path, fmt: str) -> Any:
    """A callable images -> list of output tensors, running the exported file."""
    if fmt == "onnx":
        from gpnas.objectives.onnx_runtime import onnx_session, run_onnx

        session = onnx_session(path, threads=1)
        return lambda images: run_onnx(session, images)
    loaded = torch.jit.load(str(path)).eval()

    def run(images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return _as_list(loaded(images))

    return run


def verify_export(path: Path, fmt: str, deploy: DeployModel, size: int, opts: DeployOptions) -> dict[str, Any]:
    """Run the file on a fixed input (raw outputs within ``ATOL`` of the torch model's) and on the digits val
    images (the same COCO AP to 3 decimals). -> {"max_abs_diff", "ap_torch", "ap_runtime", "images"}."""
    run = _runtime(path, fmt)
    batch = opts.batch or 2  # a dynamic batch is checked at a batch it was not traced with
    x = _example(batch, size)
    with torch.no_grad():
        expected = _as_list(deploy(x))
    with torch.no_grad():
        got = run(x)
    if len(got) != len(expected):
        raise ExportCheckFailed(f"{path.name}: {len(got)} outputs from {fmt}, the torch model gives {len(expected)}")
    worst = 0.0
    for name, a, b in zip(deploy.output_names(), expected, got, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise ExportCheckFailed(f"{path.name}: output {name} has shape {tuple(b.shape)} in {fmt}, "
                                    f"{tuple(a.shape)} in torch")
        diff = float((a.float() - b.float()).abs().max())
        if not diff <= ATOL:
            raise ExportCheckFailed(f"{path.name}: output {name} differs from the torch model by {diff:.3g} "
                                    f"(max abs, fp32; allowed {ATOL:g})")
        worst = max(worst, diff)
    ap_torch, ap_runtime, n = _val_ap(deploy, run, size, batch=opts.batch)
    if n and round(ap_torch, 3) != round(ap_runtime, 3):
        raise ExportCheckFailed(f"{path.name}: COCO AP on the digits val images is {ap_runtime:.4f} with {fmt}, "
                                f"{ap_torch:.4f} with torch (they must agree to 3 decimals)")
    return {"max_abs_diff": worst, "atol": ATOL, "ap_torch": ap_torch, "ap_runtime": ap_runtime, "images": n}


class _Scored(nn.Module):
    """What :func:`inference_on_dataset` needs: ``model(images)`` -> level maps, and ``decode``."""

    def __init__(self, run: Any, deploy: DeployModel) -> None:
        super().__init__()
        self.run, self.deploy = run, deploy

    def forward(self, images: torch.Tensor) -> Any:
        out = self.run(images)
        return out if not self.deploy.decode else out[0]

    def decode(self, outputs: Any) -> torch.Tensor:
        if self.deploy.decode:
            return outputs
        return self.deploy.detector.decode(list(outputs)[:3])  # type: ignore[operator]


def _val_ap(deploy: DeployModel, run: Any, size: int, *, batch: int | None) -> tuple[float, float, int]:
    """COCO AP of the torch graph and of the runtime on the bundled digits val images at ``size``."""
    from gpnas.objectives.accuracy import CocoEvaluator, inference_on_dataset
    from gpnas.trainers.data import CocoDetection, make_loader
    from gpnas.trainers.digits import build_digits_dataset

    paths = build_digits_dataset(seed=0, img_size=160, n_train=1, n_val=VAL_IMAGES)
    val = CocoDetection(paths.val_images, paths.val_ann, img_size=size)
    evaluator = CocoEvaluator(val.coco, category_ids=val.category_ids)
    loader = make_loader(val, batch_size=batch or 8, shuffle=False, seed=0, drop_last=batch is not None)
    num_classes = deploy.detector.num_classes  # type: ignore[attr-defined]
    if num_classes != len(val.category_ids):
        return math.nan, math.nan, 0  # another dataset's classes: only the raw check applies
    torch_ap = inference_on_dataset(_Scored(lambda x: _as_list(deploy(x)), deploy), loader, evaluator)["ap"]
    runtime_ap = inference_on_dataset(_Scored(run, deploy), loader, evaluator)["ap"]
    return float(torch_ap), float(runtime_ap), len(val)


def compare_latency(spec: ArchSpec, model: nn.Module, onnx_file: Path, opts: DeployOptions,
                    protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fused torch model and its ONNX export timed under one CPU protocol (the search's, at the graph's batch
    and size): {"torch": LatencyResult dict, "onnxruntime": LatencyResult dict, "protocol": ...}."""
    from gpnas.objectives.latency import LatencyProtocol, measure_latency
    from gpnas.objectives.onnx_runtime import measure_onnx_latency

    settings = {k: v for k, v in (protocol or {}).items()
                if k in ("warmup", "repeats", "iters_per_repeat", "threads", "warmup_seconds")}
    chosen = LatencyProtocol(device="cpu", dtype="fp32", batch=opts.batch or 1, img_size=opts.size(spec), **settings)
    return {"protocol": chosen.to_dict(), "torch": measure_latency(model, chosen).to_dict(),
            "onnxruntime": measure_onnx_latency(onnx_file, chosen).to_dict()}

