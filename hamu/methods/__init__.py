"""Unlearning methods as equivalent-gradient rules, built by name."""

from hamu.methods.base import Objective, RuleOutput, UpdateRule
from hamu.methods.registry import METHODS, make_method

__all__ = ["METHODS", "Objective", "RuleOutput", "UpdateRule", "make_method"]
