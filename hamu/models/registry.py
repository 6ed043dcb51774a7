"""Build models by name from a JSON-able config: the one place that lists the architectures.

A model built here remembers its name and config (``model.hamu_architecture`` / ``model.hamu_config``),
so :func:`hamu.models.save_checkpoint` can record them and :func:`hamu.models.load_checkpoint` can rebuild
the same module before loading the weights; no code is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from torch import nn

from hamu.models.nets import MLP, ResNet20, SmallCNN, TextClassifier

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet20": ResNet20,
    "text": TextClassifier,
}


def model_names() -> list[str]:
    return list(MODELS)


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a user's architecture under ``name`` so that recipes train it and checkpoints rebuild it.

    ``factory(**config)`` gets the recipe's ``model_config`` plus what the data decides among
    ``num_classes``, ``in_features``, ``in_channels``, ``image_size`` and ``vocab_size`` (those its signature
    accepts). Registering a name twice with another factory is refused: checkpoints name the architecture,
    and a name that meant two models could not be rebuilt faithfully.
    """
    if MODELS.get(name, factory) is not factory:
        raise ValueError(f"model name {name!r} is already registered to {MODELS[name]!r}")
    MODELS[name] = factory


def build_model(name: str, **config: Any) -> nn.Module:
    """Build the architecture ``name`` with keyword ``config``; unknown names or options raise ValueError."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None
    try:
        json.dumps(config)
    except TypeError as exc:
        raise ValueError(
            f"model config must be JSON-serialisable (it is saved with checkpoints): {exc}"
        ) from None
    try:
        model = factory(**config)
    except TypeError as exc:
        raise ValueError(f"bad config for model {name!r}: {exc}") from None
    setattr(model, "hamu_architecture", name)  # noqa: B010 - plain attributes, not submodules
    setattr(model, "hamu_config", dict(config))  # noqa: B010
    return model


def architecture_of(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(name, config)`` of a model built by :func:`build_model`, else None."""
    name = getattr(model, "hamu_architecture", None)
    config = getattr(model, "hamu_config", None)
    if isinstance(name, str) and isinstance(config, dict):
        return name, dict(config)
    return None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
