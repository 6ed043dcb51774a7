"""Training: one model from (data, recipe), or the original / retrained-reference pair of a split.

Presets (``PRESETS``) name measured configurations; docs/data.md lists what they reach on a 2-core CPU.
"""

from hamu.train.recipe import PRESETS, Preset, Recipe, get_preset
from hamu.train.trainer import (
    TrainedModel,
    TrainedPair,
    evaluate_model,
    featurizer_from_metadata,
    gradient_norm,
    loss_attack_auc,
    per_example_losses,
    preset_data,
    preset_split,
    sized_train_test,
    train_model,
    train_pair,
)

__all__ = [
    "PRESETS",
    "Preset",
    "Recipe",
    "TrainedModel",
    "TrainedPair",
    "evaluate_model",
    "featurizer_from_metadata",
    "get_preset",
    "gradient_norm",
    "loss_attack_auc",
    "per_example_losses",
    "preset_data",
    "preset_split",
    "sized_train_test",
    "train_model",
    "train_pair",
]
