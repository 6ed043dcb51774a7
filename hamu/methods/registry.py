"""Build unlearning methods by name: the one place that lists them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hamu.core.transform import HamuConfig
from hamu.methods.base import SCRUB_ALPHA, SCRUB_GAMMA, UpdateRule
from hamu.methods.baselines import (
    FineTune,
    GradientAscent,
    GradientRectified,
    PCGrad,
    Scrub,
    WeightedDifference,
)
from hamu.methods.hamu_rule import HamuRule

#: The methods whose steps HAMU's geometry describes (options: HamuConfig's fields).
HAMU_METHODS: tuple[str, ...] = ("hamu-q", "hamu-u")


def _hamu(variant: str) -> Callable[..., UpdateRule]:
    def build(**options: Any) -> UpdateRule:
        return HamuRule(config=HamuConfig(variant=variant, **options))  # type: ignore[arg-type]

    return build


METHODS: dict[str, Callable[..., UpdateRule]] = {
    **{variant: _hamu(variant) for variant in HAMU_METHODS},
    "ft": lambda: FineTune(),
    "ga": lambda: GradientAscent(),
    "gdiff": lambda: WeightedDifference(name="gdiff"),
    "neggrad+": lambda retain_weight=0.75: WeightedDifference(name="neggrad+", retain_weight=retain_weight),
    "kl": lambda: WeightedDifference(name="kl", retain_objective="kl"),
    "scrub": lambda alpha=SCRUB_ALPHA, gamma=SCRUB_GAMMA: Scrub(alpha=alpha, gamma=gamma),
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
