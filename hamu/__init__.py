"""HAMU: hardness-aware multi-objective unlearning, as a plain PyTorch library.

The library has no orchestration dependencies: hand it a model, a loss and two batch iterables.
"""

from hamu.core import (
    BlockSolution,
    Branch,
    FlatLayout,
    HamuConfig,
    HamuTransform,
    block_coefficients,
    solve_block,
)
from hamu.methods import METHODS, make_method
from hamu.unlearner import (
    NonFiniteError,
    StepRecord,
    UnlearnConfig,
    Unlearner,
    UnlearnResult,
    unlearn,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "BlockSolution",
    "Branch",
    "FlatLayout",
    "HamuConfig",
    "HamuTransform",
    "NonFiniteError",
    "StepRecord",
    "UnlearnConfig",
    "UnlearnResult",
    "Unlearner",
    "block_coefficients",
    "make_method",
    "solve_block",
    "unlearn",
]
