"""Build unlearning methods by name: the one place that lists them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hamu.core.transform import HamuConfig
from hamu.methods.base import UpdateRule
from hamu.methods.baselines import (
    FineTune,
    GradientAscent,
    GradientRectified,
    PCGrad,
    Scrub,
    WeightedDifference,
)
from hamu.methods.hamu_rule import HamuRule


def _hamu(variant: str) -> Callable[..., UpdateRule]:
    def build(**options: Any) -> UpdateRule:
        return HamuRule(config=HamuConfig(variant=variant, **options))  # type: ignore[arg-type]

    return build


METHODS: dict[str, Callable[..., UpdateRule]] = {
    "hamu-q": _hamu("hamu-q"),
    "hamu-u": _hamu("hamu-u"),
    "ft": lambda: FineTune(),
    "ga": lambda: GradientAscent(),
    "gdiff": lambda: WeightedDifference(name="gdiff"),
    "neggrad+": lambda retain_weight=0.75: WeightedDifference(name="neggrad+", retain_weight=retain_weight),
    "kl": lambda: WeightedDifference(name="kl", retain_objective="kl"),
    "scrub": lambda alpha=0.001, gamma=0.99: Scrub(alpha=alpha, gamma=gamma),
    "gru": lambda: GradientRectified(),
    "pcgrad": lambda: PCGrad(),
}


def make_method(name: str, **options: Any) -> UpdateRule:
    """Build the method called ``name``; options are its keyword arguments (e.g. HAMU's config fields)."""
    try:
        factory = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}") from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for method {name!r}: {exc}") from None
