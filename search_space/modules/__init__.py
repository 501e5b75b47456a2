"""Torch building blocks. Importing this package registers every block family (one per file)."""

from gpnas.search_space.modules import csp, elan, heads, necks, residual, spp  # noqa: F401  (registration)
from gpnas.search_space.modules.common import ConvUnit, ImplicitA, ImplicitM, MaskedAdd
from gpnas.search_space.modules.registry import BLOCK_EXAMPLES, NECKS, SPP_BLOCKS, STAGE_BLOCKS

__all__ = [
    "BLOCK_EXAMPLES",
    "NECKS",
    "SPP_BLOCKS",
    "STAGE_BLOCKS",
    "ConvUnit",
    "ImplicitA",
    "ImplicitM",
    "MaskedAdd",
]
