"""Unlearning methods as equivalent-gradient rules, built by name."""

from hamu.methods.base import Objective, RuleOutput, UpdateRule, objective_weights, stops_on_degradation
from hamu.methods.registry import HAMU_METHODS, METHODS, make_method

__all__ = [
    "HAMU_METHODS",
    "METHODS",
    "Objective",
    "RuleOutput",
    "UpdateRule",
    "make_method",
    "objective_weights",
    "stops_on_degradation",
]
