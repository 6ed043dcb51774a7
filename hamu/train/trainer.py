"""Train one model from (data, recipe), or the original / retrained-reference pair of a :class:`Split`.

* The **original** trains on retain ∪ forget; the **retrained reference** on retain only, with the same
  recipe and seed (same initial weights, same batch-order generator): the gold standard an unlearned model
  is compared against.
* Each model's metadata records the digest of the exact dataset it was trained on, computed from the rows
  it was fed; :func:`train_pair` checks them against the split's digests, so "the reference never saw a
  forget row" is verified, not assumed.
* Deterministic where torch allows: the global RNG state is saved and restored around training, weights are
  initialised from ``manual_seed(seed)``, batches come from a dedicated generator, and on CPU the kernels
  used here are deterministic for a given thread count.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from hamu.data.digest import dataset_digest
from hamu.data.spec import DatasetSpec, spec_of
from hamu.data.splits import Split
from hamu.data.tensors import (
    Featurizer,
    PluginFeaturizer,
    TextFeaturizer,
    featurizer_for,
    featurizer_from_config,
    to_tensors,
)
from hamu.device import resolve_device
from hamu.models.checkpoint import save_checkpoint
from hamu.models.registry import MODELS, build_model
from hamu.plugins import PluginImportError, import_function
from hamu.train.losses import recipe_loss
from hamu.train.recipe import Preset, Recipe, get_preset, plugin_code_digests
from hamu.unlearner import eval_mode

METADATA_VERSION = 1


@dataclass
class TrainedModel:
    """A trained model, its featurizer (how rows become inputs) and its JSON metadata."""

    model: nn.Module
    featurizer: Featurizer
    metadata: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(self.model, path, self.metadata)

    def evaluate(self, ds: Any, batch_size: int = 2048) -> dict[str, float]:
        return evaluate_model(self.model, ds, self.featurizer, batch_size=batch_size)


@dataclass
class TrainedPair:
    """The original (retain ∪ forget) and the retrained reference (retain only) of one split."""

    original: TrainedModel
    reference: TrainedModel
    split: Split

    def save(self, folder: str | Path) -> dict[str, Path]:
        base = Path(folder)
        return {
            "original": self.original.save(base / "original.safetensors"),
            "reference": self.reference.save(base / "reference.safetensors"),
        }


def featurizer_from_metadata(metadata: Mapping[str, Any]) -> Featurizer:
    """The featurizer a checkpoint's model expects (image scaling, or the vocabulary it was trained with)."""
    config = metadata.get("featurizer")
    if not isinstance(config, dict):
        raise ValueError("the metadata has no featurizer config (not written by hamu.train?)")
    return featurizer_from_config(config)


def recipe_featurizer(recipe: Recipe, spec: DatasetSpec, data: Any) -> Featurizer:
    """The featurizer a model trained on ``data`` with ``recipe`` reads its rows with, fitted on ``data``:
    the project's own (``recipe.featurizer``) or the data kind's."""
    if recipe.featurizer is not None:
        return PluginFeaturizer.fit(recipe.featurizer, data)
    options = (
        {"max_size": recipe.vocab_size, "min_freq": recipe.vocab_min_freq, "max_len": recipe.text_max_len}
        if spec.kind == "text"
        else {}
    )
    return featurizer_for(spec, fit_on=data, **options)


def _complete_config(
    recipe: Recipe, spec: DatasetSpec, featurizer: Featurizer, inputs: torch.Tensor
) -> dict[str, Any]:
    """The recipe's model config plus what the data decides (classes, input shape, vocabulary size).

    A project's own featurizer decides the input width itself: it is read from the encoded ``inputs``."""
    if recipe.model not in MODELS:
        raise ValueError(f"unknown model {recipe.model!r}; valid names: {', '.join(MODELS)}")
    accepted = set(inspect.signature(MODELS[recipe.model]).parameters)
    derived: dict[str, Any] = {"num_classes": spec.num_classes}
    if spec.kind == "image":
        derived["in_features"] = int(np.prod(spec.input_shape))
        derived["in_channels"] = int(spec.input_shape[0])
        derived["image_size"] = int(spec.input_shape[-1])
    if spec.kind == "tabular":
        derived["in_features"] = int(spec.input_shape[0])
    if isinstance(featurizer, TextFeaturizer):
        derived["vocab_size"] = len(featurizer.vocab)
    if isinstance(featurizer, PluginFeaturizer):
        derived["in_features"] = int(np.prod(inputs.shape[1:]))
    config = {k: v for k, v in derived.items() if k in accepted}
    config.update({k: list(v) if isinstance(v, tuple) else v for k, v in recipe.model_config.items()})
    return config


def _optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


@torch.no_grad()
def _forward_all(
    model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    model.eval()
    outs = [
        model(inputs[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0)


def per_example_losses(
    model: nn.Module, ds: Any, featurizer: Featurizer | None = None, *, batch_size: int = 2048
) -> np.ndarray:
    """Cross-entropy of every row of ``ds`` under ``model`` (eval mode), as float64."""
    inputs, targets = to_tensors(ds, featurizer)
    device = next(model.parameters()).device
    logits = _forward_all(model, inputs, batch_size, device)
    return F.cross_entropy(logits, targets, reduction="none").double().numpy()


def evaluate_model(
    model: nn.Module, ds: Any, featurizer: Featurizer | None = None, *, batch_size: int = 2048
) -> dict[str, float]:
    """Mean loss and accuracy on ``ds`` (eval mode)."""
    inputs, targets = to_tensors(ds, featurizer)
    if len(targets) == 0:
        return {"loss": math.nan, "accuracy": math.nan, "n": 0.0}
    device = next(model.parameters()).device
    logits = _forward_all(model, inputs, batch_size, device)
    loss = F.cross_entropy(logits, targets).item()
    acc = (logits.argmax(1) == targets).double().mean().item()
    return {"loss": float(loss), "accuracy": float(acc), "n": float(len(targets))}


def gradient_norm(
    model: nn.Module, ds: Any, featurizer: Featurizer | None = None, *, batch_size: int = 2048
) -> float:
    """Global L2 norm of the gradient of the mean cross-entropy over all of ``ds`` (eval mode, unclipped).

    This is what the unlearning loop clips to 1: near zero means an over-trained model whose gradients
    carry no direction to move in (the paper's pitfall); usable models sit around 0.05–1.
    """
    inputs, targets = to_tensors(ds, featurizer)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    grads = [torch.zeros_like(p) for p in params]
    n = len(targets)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            x, y = inputs[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
            loss = F.cross_entropy(model(x), y, reduction="sum") / n
            for g, gi in zip(grads, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
                if gi is not None:
                    g += gi
    return float(torch.sqrt(torch.stack([(g.double() ** 2).sum() for g in grads]).sum()).item())


def loss_attack_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the simplest membership attack, "lower loss = member" (Mann–Whitney, ties count ½).

    A quick signal check for training presets; :mod:`hamu.evaluation` has the full attack suite.
    """
    from scipy.stats import rankdata

    m = np.asarray(member_losses, dtype=np.float64)
    o = np.asarray(nonmember_losses, dtype=np.float64)
    if m.size == 0 or o.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([-m, -o]))
    return float((ranks[: m.size].sum() - m.size * (m.size + 1) / 2) / (m.size * o.size))


def _builtin_loop(
    recipe: Recipe,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    *,
    role: str,
    progress: bool,
    num_classes: int,
) -> list[dict[str, float]]:
    """The recipe's own loop: its optimizer and schedule, its loss (cross-entropy by default), seeded batch
    order."""
    loss_fn = recipe_loss(recipe, num_classes)
    n = len(targets)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    history: list[dict[str, float]] = []
    optimizer = _optimizer(recipe, model.parameters())
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if recipe.schedule == "cosine"
        else None
    )
    order = torch.Generator().manual_seed(recipe.seed)
    model.train()
    bar = tqdm(total=total_steps, desc=f"train {role} ({recipe.model})", disable=not progress, leave=False)
    try:
        for epoch in range(recipe.epochs):
            perm = torch.randperm(n, generator=order)
            total, seen = 0.0, 0
            for i in range(0, n, recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                bar.update(1)
                if len(idx) < 2 and n > 1:  # a batch of one breaks batch norm; its row is seen next epoch
                    continue
                x, y = inputs[idx].to(device), targets[idx].to(device)
                loss = loss_fn(model(x), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss at epoch {epoch}, step {i // recipe.batch_size}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            epoch_loss = total / max(seen, 1)
            history.append({"epoch": float(epoch + 1), "loss": epoch_loss})
            bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss:.4f}")
    finally:
        bar.close()
    return history


class TrainingLoopError(RuntimeError):
    """A recipe's own training loop failed or returned a model hamu cannot serve; the message names it."""


def _run_train_loop(
    recipe: Recipe, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, role: str
) -> nn.Module:
    """Call the recipe's ``train_loop(model, inputs, targets, *, seed, recipe)`` and check what it gives back.

    The loop receives the freshly initialised registered architecture (seeded by ``recipe.seed``) and the
    featurized CPU tensors; it trains the model in place and returns None, or returns a trained module with
    the same state-dict keys and shapes (so that checkpoints rebuild from the registry).
    """
    name = recipe.train_loop
    assert name is not None
    try:
        loop = import_function(name)
    except PluginImportError as exc:
        raise TrainingLoopError(f"training loop {name!r}: {exc}") from exc
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    model.train()
    try:
        returned = loop(model, inputs, targets, seed=recipe.seed, recipe=recipe)
    except Exception as exc:
        raise TrainingLoopError(f"training loop {name!r} raised while training the {role}: {exc}") from exc
    trained = model if returned is None else returned
    if not isinstance(trained, nn.Module):
        raise TrainingLoopError(
            f"training loop {name!r} returned {type(trained).__name__}, not a torch module (or None)"
        )
    got = {k: (tuple(v.shape), v.dtype) for k, v in trained.state_dict().items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:3]
        extra = sorted(set(got) - set(expected))[:3]
        raise TrainingLoopError(
            f"training loop {name!r} returned a model whose state dict does not match {recipe.model!r} "
            f"(missing {missing}, unexpected {extra}, or other shapes or dtypes)"
        )
    for key, value in trained.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrainingLoopError(f"training loop {name!r} left non-finite values in {key!r}")
    return trained


def train_model(
    data: Any,
    recipe: Recipe,
    *,
    spec: DatasetSpec | None = None,
    role: str = "model",
    progress: bool = True,
    eval_sets: Mapping[str, Any] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """Train one model on ``data`` (a hamu dataset) with ``recipe``; metadata records the data digest.

    The recipe's ``train_loop``, when set, trains instead of the built-in loop (see :func:`_run_train_loop`);
    a failure raises :class:`TrainingLoopError` naming it, before anything is written.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    spec = spec or spec_of(data)
    # The recipe's loss is checked before any training, whichever loop runs: unlearning differentiates it.
    recipe_loss(recipe, spec.num_classes)
    # Digested before anything runs: the code recorded is the code this process imported and runs. A plugin
    # that does not import is refused by name where it is resolved below.
    try:
        plugin_code: dict[str, str] | None = plugin_code_digests(recipe)
    except PluginImportError:
        plugin_code = None
    start = time.perf_counter()
    data_digest = dataset_digest(data)
    featurizer = recipe_featurizer(recipe, spec, data)
    inputs, targets = to_tensors(data, featurizer)
    if int(targets.min()) < 0 or int(targets.max()) >= spec.num_classes:
        raise ValueError(f"labels outside 0..{spec.num_classes - 1} in the training data")
    config = _complete_config(recipe, spec, featurizer, inputs)
    device = resolve_device(recipe.device)
    history: list[dict[str, float]] = []
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model, **config).to(device)
        if recipe.train_loop is not None:
            model = _run_train_loop(recipe, model, inputs, targets, role)
        else:
            history = _builtin_loop(
                recipe,
                model,
                inputs,
                targets,
                device,
                role=role,
                progress=progress,
                num_classes=spec.num_classes,
            )
    model.eval()
    train_seconds = time.perf_counter() - start
    metadata = _model_metadata(
        model,
        data,
        recipe,
        spec,
        featurizer,
        config,
        role=role,
        data_digest=data_digest,
        eval_sets=eval_sets,
        history=history,
        plugin_code=plugin_code_digests(recipe) if plugin_code is None else plugin_code,
    )
    metadata.update(
        {
            "train_seconds": round(train_seconds, 3),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
        }
    )
    metadata.update(dict(extra_metadata or {}))
    return TrainedModel(model=model, featurizer=featurizer, metadata=metadata)


def _model_metadata(
    model: nn.Module,
    data: Any,
    recipe: Recipe,
    spec: DatasetSpec,
    featurizer: Featurizer,
    config: Mapping[str, Any],
    *,
    role: str,
    data_digest: str,
    eval_sets: Mapping[str, Any] | None,
    history: list[dict[str, float]],
    plugin_code: Mapping[str, str],
) -> dict[str, Any]:
    """What a checkpoint records of a model and the data it stands for, and its metrics on ``data`` and
    ``eval_sets``: one schema for a model hamu trained and one it adopted. ``plugin_code`` is the SHA-256
    of the code behind the recipe's plugin names that served this model (absent from the metadata when
    empty)."""
    metrics: dict[str, Any] = {"train": evaluate_model(model, data, featurizer)}
    for name, ds in (eval_sets or {}).items():
        metrics[name] = evaluate_model(model, ds, featurizer)
    metadata: dict[str, Any] = {
        "metadata_version": METADATA_VERSION,
        "architecture": recipe.model,
        "config": config,
        "seed": recipe.seed,
        "role": role,
        "dataset": spec.name,
        "data_digest": data_digest,
        "data_size": len(data),
        "class_names": list(spec.class_names),
        "recipe": recipe.to_dict(),
        "featurizer": featurizer.to_config(),
        "metrics": metrics,
        "history": history,
        "torch_version": torch.__version__,
    }
    if plugin_code:  # which code served under the recipe's plugin names (absent when it names none)
        metadata["plugin_code"] = dict(plugin_code)
    return metadata


class WeightsMismatchError(ValueError):
    """Weights that do not load into the recipe's architecture as built for the data."""


def adopt_weights(
    data: Any,
    recipe: Recipe,
    state_dict: Mapping[str, torch.Tensor],
    *,
    role: str = "original",
    eval_sets: Mapping[str, Any] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> TrainedModel:
    """A model trained elsewhere, as a hamu checkpoint: the recipe's registered architecture, built for
    ``data`` exactly as :func:`train_model` would build it (featurizer fitted on ``data``), loaded strictly
    with ``state_dict``.

    Why strictly: every exact retrain and bank member is trained as this architecture, and the served
    weights must be exactly those the registry holds. ``data_digest`` records ``data`` as the training set:
    the caller vouches for that (the weights cannot prove which rows they saw). Raises
    :class:`WeightsMismatchError` naming the missing, unexpected or reshaped entries, or non-finite values.
    """
    spec = spec_of(data)
    featurizer = recipe_featurizer(recipe, spec, data)
    config = _complete_config(
        recipe, spec, featurizer, featurizer.encode(data.select(range(min(len(data), 2))))
    )
    model = build_model(recipe.model, **config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    if given != expected:
        missing = sorted(set(expected) - set(given))[:3]
        unexpected = sorted(set(given) - set(expected))[:3]
        reshaped = sorted(k for k in set(given) & set(expected) if given[k] != expected[k])[:3]
        raise WeightsMismatchError(
            f"the weights do not fit {recipe.model!r} as built for this data: missing {missing}, "
            f"unexpected {unexpected}, other shapes {reshaped}"
        )
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsMismatchError(f"the weights hold NaN or Inf in {bad[:3]}")
    model.load_state_dict(dict(state_dict), strict=True)
    model.eval()
    metadata = _model_metadata(
        model,
        data,
        recipe,
        spec,
        featurizer,
        config,
        role=role,
        data_digest=dataset_digest(data),
        eval_sets=eval_sets,
        history=[],
        # No training loop ran here (the weights were trained elsewhere): only the featurizer that encoded
        # the data and the loss unlearning will differentiate are code hamu used for this model.
        plugin_code=plugin_code_digests(recipe, fields=("featurizer", "loss")),
    )
    metadata.update(dict(extra_metadata or {}))
    return TrainedModel(model=model, featurizer=featurizer, metadata=metadata)


def train_pair(split: Split, recipe: Recipe, *, progress: bool = True, evaluate: bool = True) -> TrainedPair:
    """Train the original (retain ∪ forget) and the retrained reference (retain only) with one recipe.

    Both metadata carry the split's recipe and digests (never the forget record IDs). Raises if a model's
    training-data digest is not the split's, which would mean the reference saw a forget row or the
    original missed one.
    """
    evals = {"retain": split.retain, "forget": split.forget, "test": split.test} if evaluate else None
    shared = {"split": split.describe()}
    original = train_model(
        split.train,
        recipe,
        spec=split.spec,
        role="original",
        progress=progress,
        eval_sets=evals,
        extra_metadata=shared,
    )
    reference = train_model(
        split.retain,
        recipe,
        spec=split.spec,
        role="reference",
        progress=progress,
        eval_sets=evals,
        extra_metadata=shared,
    )
    if original.metadata["data_digest"] != split.train_digest:
        raise RuntimeError(
            "the original's training data is not retain ∪ forget of this split (digest mismatch)"
        )
    if reference.metadata["data_digest"] != split.retain_digest:
        raise RuntimeError("the reference's training data is not this split's retain set (digest mismatch)")
    return TrainedPair(original=original, reference=reference, split=split)


def sized_train_test(dataset: str, train_size: int | None, test_size: int | None) -> tuple[Any, Any]:
    """A dataset's training and test sets cut to seeded (stratified) subsets; ``None`` keeps every row."""
    from hamu.data.sources import load_train_test
    from hamu.data.splits import subset

    train, test = load_train_test(dataset)
    if train_size is not None:
        train = subset(train, train_size, seed=0)
    if test_size is not None:
        test = subset(test, test_size, seed=0)
    return train, test


def preset_data(preset: str | Preset) -> tuple[Any, Any]:
    """A preset's training and test sets: its dataset cut to its subset sizes."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return sized_train_test(p.dataset, p.train_size, p.test_size)


def preset_split(preset: str | Preset, **overrides: Any) -> Split:
    """The split a preset trains on: :func:`preset_data` and the preset's default split.

    ``overrides`` replace split options (e.g. ``rho=1.0``, or ``strategy="ids", forget_ids=[...]``).
    """
    from hamu.data.splits import make_split

    p = get_preset(preset) if isinstance(preset, str) else preset
    train, test = preset_data(p)
    options = {**dict(p.split), **overrides}
    strategy = str(options.pop("strategy"))
    return make_split(strategy, train, test, **options)
