"""`gpnas latency MODEL.onnx`: the graph measured with onnxruntime and, where the file names its gpnas
architecture, predicted from this machine's per-layer latency table as for a torch model.

Where the architecture comes from, first found wins:

1. the spec YAML that `gpnas export` writes into the graph's ``metadata_props`` (``gpnas.spec``, see
   :mod:`gpnas.results.deploy`);
2. the ``manifest.json`` beside the file, whose entry for this file names its spec YAML (graphs exported before
   the metadata carried the spec).

A graph from elsewhere carries neither: it is measured only, and the record says why. What is predicted is the
fused torch model of that spec on this machine's table (the figure `gpnas latency SPEC --mode predicted` gives;
a decode in the graph is not in it); what is measured is the graph itself under onnxruntime. The two are
different runtimes, so the record names both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpnas.errors import GpnasError
from gpnas.objectives.latency import LatencyProtocol
from gpnas.search_space.spec import ArchSpec, load_spec

__all__ = ["FROM_MANIFEST", "FROM_METADATA", "GraphSpec", "graph_spec", "onnx_latency"]

FROM_METADATA = "the spec in the ONNX metadata"
FROM_MANIFEST = "the spec named by the manifest.json beside the file"
#: what a prediction of a graph is, said beside every predicted figure
PREDICTED_WHAT = "the fused torch model of that spec on this machine's per-layer table"


@dataclass(frozen=True)
class GraphSpec:
    """The architecture of an ONNX file: ``spec`` and where it was read (``source``), or ``None`` and ``reason``
    (why there is none, in words for the user)."""

    spec: ArchSpec | None
    source: str | None = None
    reason: str | None = None


def _from_metadata(path: Path, metadata: dict[str, str]) -> GraphSpec | None:
    import yaml

    from gpnas.results.deploy import ARCH_ID_KEY, SPEC_KEY
    from gpnas.search_space.yaml_load import load_yaml

    text = metadata.get(SPEC_KEY)
    if text is None:
        return None
    try:
        spec = ArchSpec.from_dict(load_yaml(text, f"{path} metadata {SPEC_KEY}"), source=f"{path} {SPEC_KEY}")
    except (GpnasError, yaml.YAMLError) as err:
        return GraphSpec(None, reason=f"the graph's gpnas spec does not load ({err})")
    stamped = metadata.get(ARCH_ID_KEY)
    if stamped is not None and stamped != spec.arch_id:
        return GraphSpec(None, reason=f"the graph's gpnas spec is arch_id {spec.arch_id}, its metadata says "
                                      f"{stamped}: the file was edited")
    return GraphSpec(spec, FROM_METADATA)


def _from_manifest(path: Path) -> GraphSpec | None:
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text()).get("architectures", [])
        names = [e["spec"] for e in entries if (e.get("deploy") or {}).get("onnx", {}).get("file") == path.name]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None  # not a gpnas manifest: the file is then a graph from elsewhere
    if not names:
        return None
    try:
        return GraphSpec(load_spec(path.parent / names[0]), FROM_MANIFEST)
    except GpnasError as err:
        return GraphSpec(None, reason=f"{manifest.name} names {names[0]} for this graph, which does not load ({err})")


def graph_spec(path: Path, metadata: dict[str, str]) -> GraphSpec:
    """The architecture of the ONNX file at ``path`` (its ``metadata``: the model's metadata_props)."""
    found = _from_metadata(path, metadata) or _from_manifest(path)
    return found or GraphSpec(None, reason="the graph carries no gpnas spec")


def _prediction(spec: ArchSpec, source: str, protocol: LatencyProtocol) -> dict[str, Any]:
    from gpnas.experiments.stages import build
    from gpnas.objectives.latency_table import LatencyTable

    table = LatencyTable.load(protocol)
    predicted = table.predict(build(spec, seed=0))
    return {**asdict(predicted), "table": str(table.path), "source": source, "of": PREDICTED_WHAT}


def onnx_latency(path: Path, protocol: LatencyProtocol, mode: str = "measured") -> dict[str, Any]:
    """Latency of the ONNX file at ``path`` under ``protocol``: ``measured`` (onnxruntime), ``predicted`` (the
    table, when the file names its spec) or ``both``. Without a spec, ``predicted`` and ``both`` fall back to the
    measurement and ``predicted_note`` says why. -> {"file", "runtime", "mode", "protocol", "arch_id", "name",
    "predicted": {...} or None, "predicted_note": str or None, "measured": {...} or None, "latency_ms"}."""
    from gpnas.objectives.onnx_runtime import measure_onnx_latency, onnx_metadata, onnx_session

    found = graph_spec(path, onnx_metadata(onnx_session(path))) if mode != "measured" else GraphSpec(None)
    out: dict[str, Any] = {"file": str(path), "runtime": "onnxruntime", "mode": mode, "protocol": asdict(protocol),
                           "arch_id": found.spec.arch_id if found.spec else None,
                           "name": found.spec.name if found.spec else None,
                           "predicted": None, "predicted_note": None, "measured": None}
    if found.spec is not None:
        out["predicted"] = _prediction(found.spec, str(found.source), protocol)
    elif mode != "measured":
        out["predicted_note"] = f"predicted: n/a ({found.reason}; measured only)"
    if mode != "predicted" or found.spec is None:
        out["measured"] = measure_onnx_latency(path, protocol).to_dict()
    out["latency_ms"] = out["predicted"]["ms"] if out["predicted"] else out["measured"]["median_ms"]
    return out
