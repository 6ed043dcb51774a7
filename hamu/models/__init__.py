"""Models by name (MLP, small CNN, ResNet-20, text classifier) and safe safetensors checkpoints."""

from hamu.models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    model_digest,
    read_checkpoint_metadata,
    save_checkpoint,
    tensors_digest,
)
from hamu.models.nets import MLP, ResNet20, SmallCNN, TextClassifier
from hamu.models.registry import (
    MODELS,
    architecture_of,
    build_model,
    count_parameters,
    model_names,
    register_model,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "MLP",
    "MODELS",
    "CheckpointError",
    "ResNet20",
    "SmallCNN",
    "TextClassifier",
    "architecture_of",
    "build_model",
    "count_parameters",
    "load_checkpoint",
    "model_digest",
    "model_names",
    "read_checkpoint_metadata",
    "register_model",
    "save_checkpoint",
    "tensors_digest",
]
