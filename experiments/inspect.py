"""Library side of `gpnas presets` and `gpnas describe`: resolve an architecture argument, summarise it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpnas.errors import SpecError
from gpnas.search_space.presets import PRESETS, get_preset
from gpnas.search_space.spec import MAX_IMG_SIZE, ArchSpec, load_spec


def resolve_arch(arg: str) -> ArchSpec:
    """A preset name, or a path to a spec YAML/JSON file."""
    if arg in PRESETS:
        return get_preset(arg)
    path = Path(arg)
    if path.suffix.lower() in {".yaml", ".yml", ".json"} or path.exists():
        return load_spec(path)
    return get_preset(arg)  # raises with the list of presets and a close match


def list_presets() -> list[dict[str, str]]:
    return [{"name": p.name, "family": p.family, "description": p.description} for p in PRESETS.values()]


def describe(
    spec: ArchSpec,
    *,
    img: int | None = None,
    head: str | None = None,
    gradient_path: bool = False,
    layers: bool = False,
) -> dict[str, Any]:
    """Size (params, fused params, GFLOPs at ``img`` and 640) and, if asked, gradient-path metrics."""
    from gpnas.experiments.stages import build, gradient_structure, measure_size

    if head is not None and head != spec.head:
        spec = spec.replace(head=head)
    img = spec.img_size if img is None else img
    if img % 32 or img < 32 or img > MAX_IMG_SIZE:
        raise SpecError(f"--img {img}: the input size must be a positive multiple of 32, at most {MAX_IMG_SIZE}")
    model = build(spec, seed=0)
    size = measure_size(spec, model, img=img)
    out: dict[str, Any] = {
        "name": spec.name,
        "arch_id": spec.arch_id,
        "head": spec.head,
        "params": int(size["params"]),
        "params_fused": int(size["params_fused"]),
        "gflops": round(size["gflops"], 4),
        "gflops_640": round(size["gflops_640"], 4),
        "img": img,
        "num_classes": spec.num_classes,
        "spec": spec.to_dict(),
    }
    if gradient_path or layers:
        aggregates, table, seconds = gradient_structure(model.eval())
        gp: dict[str, Any] = {k.removeprefix("gp_"): v for k, v in aggregates.items()}
        gp["seconds"] = round(seconds, 4)
        if layers:
            gp["layers"] = table
        out["gradient_path"] = gp
    return out
