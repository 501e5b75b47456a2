"""What a candidate is (a frozen, validated ArchSpec), the space it is sampled from, the named presets, and how a
spec becomes a torch model.

The public API is ``__all__``; each name is imported on first use (``from gpnas.search_space import X``).
"""

from __future__ import annotations

from gpnas.search_space._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "ArchSpec": "spec",
    "load_spec": "spec",
    "SearchSpace": "space",
    "PRESETS": "presets",
    "get_preset": "presets",
    "build_detector": "builder",
    "Detector": "builder",
})
