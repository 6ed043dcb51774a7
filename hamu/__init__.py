"""HAMU: hardness-aware multi-objective unlearning, as a plain PyTorch library.

The library has no orchestration dependencies: hand it a model, a loss and two batch iterables.
"""

from hamu.controller import ForgetTarget, TargetResult, unlearn_to_target
from hamu.core import (
    BlockSolution,
    Branch,
    FlatLayout,
    HamuConfig,
    HamuTransform,
    block_coefficients,
    solve_block,
)
from hamu.hardness import HardnessReport, assess_hardness
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
    "ForgetTarget",
    "HamuConfig",
    "HamuTransform",
    "HardnessReport",
    "NonFiniteError",
    "StepRecord",
    "TargetResult",
    "UnlearnConfig",
    "UnlearnResult",
    "Unlearner",
    "assess_hardness",
    "block_coefficients",
    "make_method",
    "solve_block",
    "unlearn",
    "unlearn_to_target",
]
