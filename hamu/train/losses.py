"""The training objective a recipe names: cross-entropy, or the project's own loss by import path.

Why a name and not a function in the recipe: the recipe is stored in every checkpoint and bank digest and
sent to Dask workers; a name travels and is digested, a closure does not. The function is resolved where it
is used and checked once on a tiny batch, so a loss that cannot serve fails by name before any training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hamu.plugins import PluginImportError, import_function
from hamu.train.recipe import Recipe

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LossError(ValueError):
    """A recipe's loss cannot be used; the message names it."""


def recipe_loss(recipe: Recipe, num_classes: int = 2) -> LossFn:
    """The recipe's objective ``loss(logits, targets) -> scalar``: ``F.cross_entropy`` unless it names one.

    The check batch has ``num_classes`` columns (the model's output width: a loss with class weights needs
    it) and two rows."""
    if recipe.loss is None:
        return F.cross_entropy
    name = recipe.loss
    try:
        found = import_function(name)
    except PluginImportError as exc:
        raise LossError(f"loss {name!r}: {exc}") from exc
    width = max(int(num_classes), 2)
    logits = torch.zeros(2, width, requires_grad=True)
    try:
        value = found(logits, torch.tensor([0, width - 1]))
    except Exception as exc:
        raise LossError(f"loss {name!r} fails on a batch of two rows: {exc}") from exc
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.requires_grad:
        raise LossError(f"loss {name!r} must return a scalar tensor that carries gradients, got {value!r}")
    loss: LossFn = found
    return loss
