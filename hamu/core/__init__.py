"""HAMU's mathematics: the exact block solver and the model-wide transform (torch only)."""

from hamu.core.layout import FlatLayout
from hamu.core.solver import BRANCH_LABELS, BlockSolution, Branch, block_coefficients, solve_block
from hamu.core.transform import HamuConfig, HamuTransform, TransformOutput

__all__ = [
    "BRANCH_LABELS",
    "BlockSolution",
    "Branch",
    "FlatLayout",
    "HamuConfig",
    "HamuTransform",
    "TransformOutput",
    "block_coefficients",
    "solve_block",
]
